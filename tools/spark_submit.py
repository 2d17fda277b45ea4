"""`spark-submit` takes a Python file, not a console script: this one runs `pipeline`.

    spark-submit --master spark://host:7077 tools/spark_submit.py \\
        predict --engine spark /mnt/archive/scans --out /mnt/archive/predictions.parquet

(Run as a file, pipeline/__main__.py would put pipeline/ first on sys.path, where its
config.py and errors.py could shadow other packages' modules.)
"""

from pipeline.cli import entry_point

if __name__ == "__main__":
    entry_point()

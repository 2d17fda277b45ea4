"""Build tools/dvc_plots/template.html: DVC's plots page with Vega, Vega-Lite and vega-embed
inlined, so `dvc plots show` draws every plot with no network (DVC's own page loads them from
a CDN). Each library comes from its pinned npm tarball, checked against the registry's sha512
integrity before use.

    python tools/dvc_plots/build_template.py   # rewrites template.html beside it

Standard library only. The versions, tarball URLs and integrities are those in LIBRARIES and
README.md beside this file: change them together.
"""

from __future__ import annotations

import base64
import hashlib
import io
import re
import sys
import tarfile
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
TEMPLATE = HERE / "template.html"

# (package, version, file inside the tarball, the registry's `dist.integrity`)
LIBRARIES = (
    (
        "vega",
        "5.33.1",
        "package/build/vega.min.js",
        "sha512-1fArfVDUqVbb5z8n+/nVQb+VNBzx8svY6CrsyTK4Ujm4yrd9I1auoKxBAPXLCavY1LcrbHUskQbGUP8gXOzyQw==",
    ),
    (
        "vega-lite",
        "5.23.0",
        "package/build/vega-lite.min.js",
        "sha512-l4J6+AWE3DIjvovEoHl2LdtCUkfm4zs8Xxx7INwZEAv+XVb6kR6vIN1gt3t2gN2gs/y4DYTs/RPoTeYAuEg6mA==",
    ),
    (
        "vega-embed",
        "6.29.0",
        "package/build/vega-embed.min.js",
        "sha512-PmlshTLtLFLgWtF/b23T1OwX53AugJ9RZ3qPE2c01VFAbgt3/GSNI/etzA/GzdrkceXFma+FDHNXUppKuM0U6Q==",
    ),
)

# DVC fills {plot_divs} (one <div> and <script> per plot, calling vegaEmbed) and {refresh_tag}
# (`dvc plots show --open` refreshing); the page has no {scripts}, DVC's CDN <script> tags.
PAGE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC Plot</title>
    <!-- {provenance} -->
{scripts}
    <script>
        // SVG, not vega-embed's default canvas: sharp at any zoom or in print, and every mark
        // is an element (tests/integration/test_dvc_views.py counts them). DVC's page calls
        // vegaEmbed(id, spec) with no options.
        window.vegaEmbed = (function (embed) {{
            return function (element, spec, options) {{
                return embed(element, spec, Object.assign({{renderer: "svg"}}, options));
            }};
        }})(window.vegaEmbed);
    </script>
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""

PLACEHOLDERS = ("{plot_divs}", "{refresh_tag}", "{scripts}")


def tarball_url(package: str, version: str) -> str:
    return f"https://registry.npmjs.org/{package}/-/{package}-{version}.tgz"


def read_checked(package: str, version: str, member: str, integrity: str) -> str:
    """The minified build `member` of the package's tarball, after checking its sha512."""
    url = tarball_url(package, version)
    with urllib.request.urlopen(url, timeout=60) as response:
        data = response.read()
    actual = "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()
    if actual != integrity:
        raise SystemExit(f"{url}: integrity {actual}, expected {integrity}")
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
        source = archive.extractfile(member).read().decode("utf-8")
    # The map is not shipped: its comment would only make a browser's devtools ask for it.
    source = re.sub(r"\n//# sourceMappingURL=\S+\s*$", "\n", source)
    # Inlined in a <script>, the code must not close it, nor hold a placeholder DVC fills.
    if "</script" in source.lower() or any(mark in source for mark in PLACEHOLDERS):
        raise SystemExit(f"{package}@{version} {member} cannot be inlined as it is")
    return source


def build_page() -> str:
    scripts = []
    for package, version, member, integrity in LIBRARIES:
        source = read_checked(package, version, member, integrity)
        scripts.append(
            f"    <!-- {package}@{version}: {tarball_url(package, version)} {member} -->\n"
            f"    <script>{source}</script>"
        )
    provenance = "inlined from npm; see tools/dvc_plots/README.md"
    return PAGE.format(provenance=provenance, scripts="\n".join(scripts))


def main() -> int:
    TEMPLATE.write_text(build_page(), encoding="utf-8")
    print(f"wrote {TEMPLATE} ({TEMPLATE.stat().st_size:,} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

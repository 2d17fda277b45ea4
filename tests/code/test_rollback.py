"""The champion's history and its rollback (pipeline.registry): set_champion records the
version each champion replaced, roll_back_champion walks that history back (or goes where
--to says), tags both versions with the reason, the user and the time, refuses every move it
cannot make without touching the registry, and bars the rolled-back model from the gate.

A real MLflow SQLite store; the versions need no model behind them."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import mlflow
import pytest

from pipeline import registry
from pipeline.errors import RegistryError
from tests.serving_models import tracking_store

NAME = "digits-classifier"
ROLLBACK_TAGS = ("rollback.reason", "rollback.by", "rollback.at", "rollback.replaced_by")
RESTORED_TAGS = ("restored.reason", "restored.by", "restored.at", "restored.from")


@pytest.fixture
def client(tmp_path, template_store) -> Iterator[mlflow.MlflowClient]:
    shutil.copy(template_store, tmp_path / "mlflow.db")
    with tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}"):
        yield mlflow.MlflowClient()


def _register(client: mlflow.MlflowClient, tmp_path: Path, count: int, name: str = NAME) -> None:
    """`count` versions of `name`, 1..count."""
    source = tmp_path / "source"
    source.mkdir(exist_ok=True)
    client.create_registered_model(name)
    for _ in range(count):
        client.create_model_version(name, source=source.as_uri())


def _tags(client: mlflow.MlflowClient, version: str) -> dict[str, str]:
    return dict(client.get_model_version(NAME, version).tags)


def _champion(client: mlflow.MlflowClient) -> str:
    return str(client.get_model_version_by_alias(NAME, registry.CHAMPION).version)


def _recent(stamp: str) -> bool:
    return abs(datetime.now(UTC) - datetime.fromisoformat(stamp)) < timedelta(minutes=1)


@pytest.fixture
def promoted(client, tmp_path) -> mlflow.MlflowClient:
    """Versions 1, 2 and 3 promoted in turn: 3 is champion."""
    _register(client, tmp_path, 3)
    for version in ("1", "2", "3"):
        registry.set_champion(NAME, version)
    return client


# --- the history ---------------------------------------------------------------------------------


def test_each_champion_records_the_version_it_replaced(promoted) -> None:
    client = promoted
    assert _champion(client) == "3"
    # The first champion replaced none.
    assert registry.CHAMPION_PREVIOUS_TAG not in _tags(client, "1")
    assert _tags(client, "2")[registry.CHAMPION_PREVIOUS_TAG] == "1"
    assert _tags(client, "3")[registry.CHAMPION_PREVIOUS_TAG] == "2"
    for version in ("1", "2", "3"):
        assert _recent(_tags(client, version)[registry.CHAMPION_SINCE_TAG])


def test_setting_the_champion_again_keeps_what_it_replaced(promoted) -> None:
    registry.set_champion(NAME, "3")
    assert _tags(promoted, "3")[registry.CHAMPION_PREVIOUS_TAG] == "2"
    assert _champion(promoted) == "3"


# --- rolling back --------------------------------------------------------------------------------


def test_two_rollbacks_walk_the_history_back_and_tag_both_sides(promoted) -> None:
    client = promoted
    first = registry.roll_back_champion(NAME, "accuracy fell on night images", "alice")
    assert (first.registered_model, first.from_version, first.to_version) == (NAME, "3", "2")
    assert (first.reason, first.user) == ("accuracy fell on night images", "alice")
    assert _recent(first.at)
    assert first.to_dict() == {
        "registered_model": NAME,
        "from_version": "3",
        "to_version": "2",
        "reason": "accuracy fell on night images",
        "user": "alice",
        "at": first.at,
    }
    assert _champion(client) == "2"
    rolled_back = _tags(client, "3")
    assert rolled_back[registry.ROLLED_BACK_TAG] == "true"
    assert {key: rolled_back[key] for key in ROLLBACK_TAGS} == {
        "rollback.reason": "accuracy fell on night images",
        "rollback.by": "alice",
        "rollback.at": first.at,
        "rollback.replaced_by": "2",
    }
    restored = _tags(client, "2")
    assert {key: restored[key] for key in RESTORED_TAGS} == {
        "restored.reason": "accuracy fell on night images",
        "restored.by": "alice",
        "restored.at": first.at,
        "restored.from": "3",
    }
    assert registry.ROLLED_BACK_TAG not in restored
    assert registry.rolled_back_versions(NAME) == frozenset({"3"})

    second = registry.roll_back_champion(NAME, "still wrong", "bob")
    assert (second.from_version, second.to_version) == ("2", "1")
    assert _champion(client) == "1"
    assert _tags(client, "2")["rollback.replaced_by"] == "1"
    assert _tags(client, "2")["rollback.by"] == "bob"
    assert _tags(client, "1")["restored.from"] == "2"
    assert registry.rolled_back_versions(NAME) == frozenset({"2", "3"})
    # The history of version 3's own rollback is kept.
    assert _tags(client, "3")["rollback.by"] == "alice"

    # Version 1 replaced nothing: there is no further back to go.
    with pytest.raises(RegistryError, match="held champion before version 1"):
        registry.roll_back_champion(NAME, "again", "bob")


def test_a_long_reason_is_cut_to_what_a_tag_holds(promoted) -> None:
    reason = "x" * (registry.MAX_TAG_TEXT + 500)
    done = registry.roll_back_champion(NAME, reason, "alice")
    assert done.reason == reason
    assert _tags(promoted, "3")["rollback.reason"] == "x" * registry.MAX_TAG_TEXT
    assert _tags(promoted, "2")["restored.reason"] == "x" * registry.MAX_TAG_TEXT


def test_to_moves_the_champion_to_the_version_named(promoted) -> None:
    done = registry.roll_back_champion(NAME, "version 2 had the same bug", "alice", to="1")
    assert (done.from_version, done.to_version) == ("3", "1")
    assert _champion(promoted) == "1"
    assert _tags(promoted, "3")["rollback.replaced_by"] == "1"
    assert _tags(promoted, "1")["restored.from"] == "3"
    # The version skipped over is neither rolled back nor restored.
    assert not any(key.startswith(("rollback.", "restored.")) for key in _tags(promoted, "2"))
    assert registry.rolled_back_versions(NAME) == frozenset({"3"})


def test_to_a_rolled_back_version_serves_it_again_and_lifts_its_bar(promoted, caplog) -> None:
    registry.roll_back_champion(NAME, "slow", "alice")  # 3 -> 2
    assert registry.rolled_back_versions(NAME) == frozenset({"3"})
    with caplog.at_level(logging.WARNING, logger="pipeline.registry"):
        done = registry.roll_back_champion(NAME, "the slowness was the host", "bob", to="3")
    assert (done.from_version, done.to_version) == ("2", "3")
    assert _champion(promoted) == "3"
    assert registry.ROLLED_BACK_TAG not in _tags(promoted, "3")
    assert _tags(promoted, "3")["restored.by"] == "bob"
    assert registry.rolled_back_versions(NAME) == frozenset({"2"})
    assert "version 3 of digits-classifier had been rolled back itself" in caplog.text


def test_the_default_rollback_never_brings_back_a_rolled_back_version(promoted) -> None:
    """3 -> 2 -> 1, then a person puts 3 back (--to 3): rolling 3 back again would walk to
    2, which was rolled back for its own reason. Only a person naming it may serve it."""
    registry.roll_back_champion(NAME, "3 misreads sevens", "alice")
    registry.roll_back_champion(NAME, "2 misreads ones", "alice")
    registry.roll_back_champion(NAME, "the sevens were mislabelled", "bob", to="3")
    with pytest.raises(RegistryError) as refused:
        registry.roll_back_champion(NAME, "3 is slow", "carol")
    message = str(refused.value)
    assert "version 2 of digits-classifier, which version 3 replaced, was rolled back" in message
    assert "itself" in message
    assert "2 misreads ones" in message and "--to" in message
    assert _champion(promoted) == "3"
    assert registry.rolled_back_versions(NAME) == frozenset({"1", "2"})
    # Named, it serves.
    done = registry.roll_back_champion(NAME, "3 is slow", "carol", to="2")
    assert done.to_version == "2" and _champion(promoted) == "2"


# --- refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("registered", [False, True], ids=["no-model", "no-champion"])
def test_without_a_champion_there_is_nothing_to_roll_back(client, tmp_path, registered) -> None:
    if registered:
        _register(client, tmp_path, 2)
    with pytest.raises(RegistryError, match=f"^{NAME} has no champion: there is nothing to roll"):
        registry.roll_back_champion(NAME, "reason", "alice")


def _untouched(client: mlflow.MlflowClient, champion: str, before: dict) -> None:
    """The refused rollback changed nothing: the alias and every version's tags."""
    assert _champion(client) == champion
    assert {v: _tags(client, v) for v in before} == before


def test_a_first_champion_cannot_be_rolled_back_without_to(client, tmp_path) -> None:
    _register(client, tmp_path, 2)
    registry.set_champion(NAME, "1")
    before = {v: _tags(client, v) for v in ("1", "2")}
    with pytest.raises(RegistryError) as refused:
        registry.roll_back_champion(NAME, "reason", "alice")
    assert str(refused.value) == (
        f"no version of {NAME} held champion before version 1: name the version to serve "
        "with --to VERSION"
    )
    _untouched(client, "1", before)
    # Naming one works.
    assert registry.roll_back_champion(NAME, "reason", "alice", to="2").to_version == "2"


def test_an_unknown_version_is_refused_listing_the_versions_in_order(client, tmp_path) -> None:
    _register(client, tmp_path, 11)
    registry.set_champion(NAME, "10")
    before = {v: _tags(client, v) for v in ("10",)}
    with pytest.raises(RegistryError) as refused:
        registry.roll_back_champion(NAME, "reason", "alice", to="12")
    assert str(refused.value) == (
        f"{NAME} has no version 12; its versions are 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11: "
        "pass one of them with --to"
    )
    _untouched(client, "10", before)
    assert registry.rolled_back_versions(NAME) == frozenset()


def test_the_champion_itself_is_refused_as_the_target(promoted) -> None:
    before = {v: _tags(promoted, v) for v in ("1", "2", "3")}
    with pytest.raises(RegistryError, match=f"^version 3 of {NAME} is already the champion$"):
        registry.roll_back_champion(NAME, "reason", "alice", to="3")
    _untouched(promoted, "3", before)


def test_a_version_number_given_as_an_int_is_the_same_version(promoted) -> None:
    assert registry.roll_back_champion(NAME, "reason", "alice", to=1).to_version == "1"
    assert _champion(promoted) == "1"


# --- what the gate reads -------------------------------------------------------------------------


def test_rolled_back_versions_of_an_unknown_model_are_none(client) -> None:
    assert registry.rolled_back_versions("never-registered") == frozenset()


def test_rolled_back_versions_are_only_those_tagged_true(client, tmp_path) -> None:
    _register(client, tmp_path, 3)
    client.set_model_version_tag(NAME, "1", registry.ROLLED_BACK_TAG, "true")
    client.set_model_version_tag(NAME, "2", registry.ROLLED_BACK_TAG, "false")
    # Another model's rolled-back version is not this one's.
    _register(client, tmp_path, 1, name="other-classifier")
    client.set_model_version_tag("other-classifier", "1", registry.ROLLED_BACK_TAG, "true")
    assert registry.rolled_back_versions(NAME) == frozenset({"1"})

"""interp.ids: each identity's text form round-trips; bad text names what was expected."""

from __future__ import annotations

import pytest

from interp.ids import EMBED, LOGITS, CheckpointRef, EdgeId, HeadId, Identity, MlpId, Terminal, parse_node


def test_head_round_trips_through_its_text():
    assert str(HeadId(1, 3)) == "L1H3"
    assert HeadId.parse("L12H0") == HeadId(12, 0)
    assert sorted([HeadId(1, 0), HeadId(0, 2)]) == [HeadId(0, 2), HeadId(1, 0)]


@pytest.mark.parametrize("text", ["L1", "H1", "l1h2", "L1H", "L-1H2", "L1H2x", ""])
def test_bad_head_text_is_refused(text):
    assert not HeadId.is_head(text)
    with pytest.raises(ValueError, match="head: expected 'L<layer>H<head>'"):
        HeadId.parse(text)


@pytest.mark.parametrize("identity", [HeadId(1, 3), MlpId(2), EMBED, LOGITS, EdgeId(HeadId(0, 1), HeadId(1, 2), "k"),
                                      EdgeId(EMBED, MlpId(0)), EdgeId(HeadId(1, 2), LOGITS),
                                      CheckpointRef("runs/a", 4)])
def test_every_identity_round_trips_through_its_text_by_its_parse(identity):
    assert isinstance(identity, Identity)
    assert type(identity).parse(str(identity)) == identity
    if not isinstance(identity, EdgeId | CheckpointRef):
        assert parse_node(str(identity)) == identity


@pytest.mark.parametrize("cls, text, message", [(MlpId, "MLP", "mlp: expected 'MLP<layer>'"),
                                                (MlpId, "L0H1", "mlp: expected"), (Terminal, "unembed", "node:")])
def test_bad_node_text_is_refused(cls, text, message):
    with pytest.raises(ValueError, match=message):
        cls.parse(text)


def test_checkpoint_round_trips_through_its_text():
    assert str(CheckpointRef("runs/a", 40)) == "runs/a@40"
    assert CheckpointRef.parse("runs/a@40") == CheckpointRef("runs/a", 40)
    assert CheckpointRef.parse("runs/a") == CheckpointRef("runs/a", None)
    assert CheckpointRef.parse("runs/x@y/b@7") == CheckpointRef("runs/x@y/b", 7)  # the last '@' splits


@pytest.mark.parametrize("text, message", [("runs/a@", "integer step"), ("runs/a@x", "integer step"),
                                           ("@3", "empty run directory")])
def test_bad_checkpoint_text_is_refused(text, message):
    with pytest.raises(ValueError, match=message):
        CheckpointRef.parse(text)

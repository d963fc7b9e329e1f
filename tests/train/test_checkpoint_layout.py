"""Resume refusals that DeepSpeed would only hit deep inside load_checkpoint (fast, no processes)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pretrain.checkpoint import check_layout
from pretrain.core.errors import CheckpointError

TAG = Path("/runs/x/checkpoints/step_000010")


def test_same_layout_resumes():
    check_layout(TAG, {"world_size": 4, "zero_stage": 1, "tensor_parallel_size": 2}, 4, 1, 2)
    check_layout(TAG, {"world_size": 1, "zero_stage": 0}, 2, 0, 1)  # stage 0 holds whole states: any dp size


@pytest.mark.parametrize(
    "state, now, fragment",
    [
        ({"world_size": 2, "zero_stage": 1, "tensor_parallel_size": 2}, (2, 0, 1), "tensor_model_parallel_size=2, this run asks for 1"),
        ({"world_size": 2, "zero_stage": 2}, (4, 2, 1), "ZeRO-2 optimizer shards for 2 processes, this run has 4"),
        ({"world_size": 2, "zero_stage": 0}, (2, 1, 1), "saved with ZeRO stage 0, this run would use stage 1"),
    ],
)
def test_other_layouts_are_refused_with_what_to_do(state, now, fragment):
    with pytest.raises(CheckpointError) as e:
        check_layout(TAG, state, *now)
    assert fragment in str(e.value) and str(TAG) in str(e.value)


def test_pipeline_size_change_is_refused_without_a_layout_free_copy():
    with pytest.raises(CheckpointError, match="pipeline_model_parallel_size=2, this run asks for 1.*checkpoint.universal=true"):
        check_layout(TAG, {"world_size": 2, "zero_stage": 0, "pipeline_parallel_size": 2}, 2, 0, 1, 1)


def test_a_layout_free_copy_lets_every_layout_change_through(tmp_path):
    tag = tmp_path / "step_000010"
    (tag / "universal").mkdir(parents=True)
    state = {"world_size": 4, "zero_stage": 0, "tensor_parallel_size": 2, "pipeline_parallel_size": 2}
    with pytest.raises(CheckpointError):
        check_layout(tag, state, 2, 3, 1, 1)  # the folder is there but holds no shard file
    (tag / "universal" / "pp00_tp00.pt").write_bytes(b"")
    assert check_layout(tag, state, 2, 3, 1, 1) is False  # resume through reshard.load
    assert check_layout(tag, state, 4, 0, 2, 2) is True  # same layout: DeepSpeed's own files


def test_expert_parallel_resumes_need_the_layout_free_copy(tmp_path):
    """Experts resume from the layout-free copy only (DeepSpeed's files hold rank 0's experts): without it an
    expert-parallel resume, on either side, is refused before anything is built."""
    tag = tmp_path / "step_000010"
    tag.mkdir()
    for state, ep in (({"world_size": 2, "zero_stage": 1, "expert_parallel_size": 2}, 1),
                      ({"world_size": 2, "zero_stage": 1, "expert_parallel_size": 2}, 2),
                      ({"world_size": 2, "zero_stage": 1}, 2)):
        with pytest.raises(CheckpointError, match="expert_model_parallel_size=.*which this checkpoint lacks"):
            check_layout(tag, state, 2, 1, expert_parallel_size=ep)
    assert check_layout(tag, {"world_size": 2, "zero_stage": 1, "expert_parallel_size": 1}, 2, 1) is True
    (tag / "universal").mkdir()
    (tag / "universal" / "pp00_tp00.pt").write_bytes(b"")
    assert check_layout(tag, {"world_size": 2, "zero_stage": 1, "expert_parallel_size": 2}, 2, 1) is True

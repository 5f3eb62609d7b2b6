"""Voting teachers: keyed by sample index, averaged over the last K epochs, checkpointable, and
the same in every process of a DDP run."""
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from compressor.train.distributed import DistEnv
from compressor.train.self_distill import VotingTeachers


def _logits(idx: torch.Tensor, epoch: int) -> torch.Tensor:
    """A deterministic output per (sample, epoch)."""
    return torch.stack([torch.sin(idx * (c + 1) + epoch) for c in range(4)], dim=1).float()


def test_teacher_is_the_mean_of_the_last_k_epochs_per_sample():
    vt = VotingTeachers(num_samples=6, num_classes=4, k=2)
    idx = torch.tensor([4, 1, 3])
    assert float(vt.loss(_logits(idx, 0), idx)) == 0.0  # no past epoch yet
    for epoch in range(3):
        vt.record(_logits(idx, epoch), idx)
        vt.end_epoch()
    p_t, valid = vt.teacher(torch.tensor([1, 0, 4]))
    assert valid.tolist() == [True, False, True]
    want = (F.softmax(_logits(torch.tensor([1, 4]), 1), 1) + F.softmax(_logits(torch.tensor([1, 4]), 2), 1)) / 2
    assert torch.allclose(p_t[[0, 2]], want, atol=1e-6)  # epoch 0 has left the window of k = 2
    # the term is KL(student || teacher), zero for a student equal to its teacher
    assert abs(float(vt.loss(want.log(), torch.tensor([1, 4])))) < 1e-6
    assert float(vt.loss(_logits(torch.tensor([1, 4]), 7), torch.tensor([1, 4]))) > 0
    assert vt.memory_bytes == 2 * 6 * 4 * 4 + 2 * 6 + 6 * 4 * 8 + 6 * 8


def test_state_dict_round_trip():
    vt = VotingTeachers(5, 3, k=2)
    idx = torch.arange(5)
    vt.record(torch.randn(5, 3), idx)
    vt.end_epoch()
    vt.record(torch.randn(2, 3), idx[:2])  # half an epoch, as a checkpoint never holds, but still
    other = VotingTeachers(5, 3, k=2)
    other.load_state_dict(vt.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(vt.state_dict().values(), other.state_dict().values()))


def _worker(rank: int, store: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    vt = VotingTeachers(7, 4, k=2)
    for epoch in range(2):
        # the trainer's sampler pads shards to equal length: sample 0 is seen by both ranks
        idx = torch.tensor([0, 2, 4, 6] if rank == 0 else [1, 3, 5, 0])
        vt.record(_logits(idx, epoch), idx)
        vt.end_epoch(DistEnv(rank=rank, world_size=2))
    torch.save(vt.state_dict(), f"{out}.{rank}")
    dist.destroy_process_group()


def test_two_gloo_processes_hold_the_same_teachers(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path / "vt")), nprocs=2)
    a, b = (torch.load(tmp_path / f"vt.{r}") for r in (0, 1))
    assert all(torch.equal(a[k], b[k]) for k in a)
    single = VotingTeachers(7, 4, k=2)
    for epoch in range(2):
        idx = torch.tensor([0, 2, 4, 6, 1, 3, 5, 0])
        single.record(_logits(idx, epoch), idx)
        single.end_epoch()
    assert torch.allclose(a["past"], single.state_dict()["past"], atol=1e-6)
    assert bool(a["past_seen"].all())

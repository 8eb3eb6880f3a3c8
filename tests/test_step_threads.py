"""gru4rec_ext.threads.StepThreads: the CPU trainer's choice between its thread count and one
thread from measured step times, and that the choice never changes what training computes."""
import importlib

import pytest
import torch

from conftest import needs_extension
from gru4rec_ext import _extension, threads
from gru4rec_ext.threads import StepThreads

pytestmark = needs_extension()


@pytest.fixture
def pool_threads():
    before = _extension.get_num_threads()
    yield
    _extension.set_num_threads(before)


def drive(chooser, steps, seconds_for):
    """Runs the chooser over `steps` steps whose time is seconds_for(thread count); returns the
    thread count of each step as the pool saw it."""
    seen = []
    for _ in range(steps):
        chooser.before()
        seen.append(_extension.get_num_threads())
        chooser.after(seconds_for(seen[-1]))
    return seen


@pytest.mark.parametrize("one, many, expect", [(1.0, 2.0, 1), (2.0, 1.0, 2), (1.0, 1.0, 2), (1.0, 1.04, 2), (1.0, 1.06, 1)])
def test_chooses_the_faster_count_after_each_probe(pool_threads, one, many, expect):
    chooser = StepThreads(2, period=20, probe=4, skip=1, max_period=20)
    seen = drive(chooser, 45, lambda n: one if n == 1 else many)
    assert seen[:4] == [2] * 4 and seen[4:8] == [1] * 4       # the two probes
    assert seen[8:20] == [expect] * 12                         # the rest of the period
    assert seen[20:24] == [2] * 4 and seen[24:28] == [1] * 4   # each period probes again
    assert seen[28:40] == [expect] * 12
    assert chooser.threads_used == {2: seen.count(2), 1: seen.count(1)}


def test_probes_back_off_while_the_choice_holds_and_return_when_it_changes(pool_threads):
    chooser = StepThreads(2, period=10, probe=2, skip=0, max_period=40)
    fast_two = lambda n: 1.0 if n == 1 else 0.5  # noqa: E731
    seen = drive(chooser, 20 + 40 + 40, fast_two)
    probes = [i for i in range(1, len(seen)) if seen[i] == 1 and seen[i - 1] == 2]
    # Each probe that confirms the count doubles the period (the first confirms the default):
    # 20, 40, then capped at 40.
    assert probes == [2, 22, 62]
    assert seen.count(1) == 3 * 2
    # Now one thread is faster: the next probe (at step 100) switches, and the period is back to 10.
    seen = drive(chooser, 30, lambda n: 1.0 if n == 1 else 2.0)
    assert seen[:4] == [2, 2, 1, 1] and seen[4:10] == [1] * 6
    assert seen[10:14] == [2, 2, 1, 1] and seen[14:20] == [1] * 6


def test_a_machine_that_changes_between_probes_is_probed_again_at_once(pool_threads):
    chooser = StepThreads(2, period=100, probe=2, skip=0, max_period=1000)
    drive(chooser, 4, lambda n: 1.0 if n == 1 else 0.5)      # probe: 2 threads, 0.5 s a step
    assert chooser.chosen == 2
    steady = drive(chooser, 40, lambda n: 1.0 if n == 1 else 0.55)
    assert steady == [2] * 40                                  # within the margins: no probe
    loaded = drive(chooser, 8, lambda n: 1.0 if n == 1 else 3.0)  # another process took a core
    assert loaded[:2] == [2, 2] and loaded[2:4] == [2, 2] and loaded[4:6] == [1, 1]
    assert loaded[6:] == [1, 1] and chooser.chosen == 1


def test_probe_steps_after_a_switch_are_not_counted(pool_threads):
    # The first `skip` steps of each probe are slow (the switch); only the rest decide.
    chooser = StepThreads(2, period=20, probe=4, skip=2)
    for seconds in (9.0, 9.0, 1.0, 1.0, 0.1, 0.1, 2.0, 2.0):
        chooser.before()
        chooser.after(seconds)
    assert chooser.chosen == 2


def test_a_changing_machine_changes_the_choice(pool_threads):
    chooser = StepThreads(2, period=10, probe=2, skip=0, max_period=10)
    slow_two = drive(chooser, 10, lambda n: 1.0 if n == 1 else 1.5)
    fast_two = drive(chooser, 10, lambda n: 1.0 if n == 1 else 0.6)
    assert slow_two[4:] == [1] * 6 and fast_two[4:] == [2] * 6


def test_bad_arguments():
    with pytest.raises(ValueError, match="at least 2 threads"):
        StepThreads(1)
    with pytest.raises(ValueError, match="2 \\* probe <= period"):
        StepThreads(2, period=10, probe=6)
    with pytest.raises(ValueError, match="skip < probe"):
        StepThreads(2, period=10, probe=2, skip=2)
    with pytest.raises(ValueError, match="period <= max_period"):
        StepThreads(2, period=10, probe=2, skip=0, max_period=5)


def test_explicit_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_explicit", False)
    assert not threads.threads_are_explicit()
    threads.set_explicit_threads()
    assert threads.threads_are_explicit()
    monkeypatch.setattr(threads, "_explicit", False)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.threads_are_explicit()


@pytest.mark.skipif(threads.usable_cpus() < 2, reason="needs 2 CPUs")
def test_switching_threads_every_few_steps_trains_the_same_weights(pool_threads, monkeypatch):
    if _extension.cpu_gemm() != "avx512":
        pytest.skip("the choice is made only with the package's own product (split-invariant)")
    train_module = importlib.import_module("gru4rec_ext.train")  # the package exports a function of that name
    from gru4rec_ext.model import GRU4Rec
    from gru4rec_ext.train import Trainer
    from train_helpers import rsc15_slice
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "_explicit", False)
    data = rsc15_slice(300, 10)[0]
    made = []

    def small_period(n):  # switches every 3 steps: 3 steps on n threads, 3 on one, ...
        made.append(StepThreads(n, period=6, probe=3, skip=0, max_period=6))
        return made[-1]

    monkeypatch.setattr(train_module, "StepThreads", small_period)
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        states = []
        for adaptive in (False, True):
            torch.manual_seed(0)
            model = GRU4Rec(data.n_items, layers=[32], backend="kernels", dropout_p_hidden=0.2)
            trainer = Trainer(model, data, n_epochs=1, batch_size=8, n_sample=16, loss="bpr-max", bpreg=0.5,
                              learning_rate=0.05, momentum=0.1, progress=False, adaptive_threads=adaptive)
            result = trainer.run_epoch(0)
            states.append({k: v.clone() for k, v in model.state_dict().items()})
            if adaptive:
                assert made and set(result["steps_per_thread_count"]) == {1, 2}
                assert min(result["steps_per_thread_count"].values()) > 0
            else:
                assert "steps_per_thread_count" not in result
    finally:
        torch.set_num_threads(torch_threads)
    assert all(torch.equal(states[0][k], states[1][k]) for k in states[0])

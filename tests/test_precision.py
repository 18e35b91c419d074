"""`train.amp`: bfloat16 on a CPU where this machine measured it faster, the measurement kept, float32 elsewhere."""

import json
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from imageclf.core.cache import CACHE_ENVIRONMENT_VARIABLE
from imageclf.core.device import MixedPrecision
from imageclf.training.loop import fit, run_epoch
from imageclf.training.precision import MIN_SPEEDUP, precision_file, probe_key, training_precision
from tests.helpers import train_config

CPU = torch.device("cpu")
BATCH = 16
needs_bfloat16 = pytest.mark.skipif(
    not torch.ops.mkldnn._is_mkldnn_bf16_supported(), reason="this CPU has no bfloat16 kernels"
)


@pytest.fixture(autouse=True)
def own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(CACHE_ENVIRONMENT_VARIABLE, str(tmp_path / "cache"))
    return tmp_path / "cache"


def small_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(0.2),
        nn.Linear(16, 3),
    ).to(memory_format=torch.channels_last)


def images(count: int, seed: int) -> TensorDataset:
    """Images whose class is which colour channel is brightest: a small CNN learns it in a few epochs."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.arange(count) % 3
    pixels = torch.randn(count, 3, 16, 16, generator=generator) * 0.5
    pixels[torch.arange(count), labels] += 1.0
    return TensorDataset(pixels, labels)


def keep_rates(network: nn.Module, data: TensorDataset, float32: float, bfloat16: float) -> None:
    """Stand in for this machine's measurement of `network` on batches of `data`."""
    key = probe_key(network, (BATCH, *data[0][0].shape))
    precision_file().parent.mkdir(parents=True, exist_ok=True)
    precision_file().write_text(json.dumps({key: {"float32": float32, "bfloat16": bfloat16}}))


@needs_bfloat16
def test_a_cpu_measures_once_without_touching_the_network_and_follows_the_rates() -> None:
    network, data = small_cnn(), images(48, 0)
    before, random_state = {k: v.clone() for k, v in network.state_dict().items()}, torch.get_rng_state()

    chosen = training_precision(network, data, BATCH, CPU, amp=True)

    rates = json.loads(precision_file().read_text())[probe_key(network, (BATCH, 3, 16, 16))]
    assert rates["float32"] > 0 and rates["bfloat16"] > 0
    assert chosen.dtype == (torch.bfloat16 if rates["bfloat16"] >= MIN_SPEEDUP * rates["float32"] else None)
    after = network.state_dict()
    assert all(torch.equal(before[name], after[name]) for name in before), "BatchNorm statistics and weights kept"
    assert all(parameter.grad is None for parameter in network.parameters())
    assert torch.equal(torch.get_rng_state(), random_state), "dropout's draws in the probe left no trace"

    keep_rates(network, data, float32=10.0, bfloat16=10.0 * MIN_SPEEDUP)
    assert training_precision(network, data, BATCH, CPU, amp=True).dtype == torch.bfloat16, "the kept rates are read"
    keep_rates(network, data, float32=10.0, bfloat16=10.5)
    assert training_precision(network, data, BATCH, CPU, amp=True).dtype is None, "a small gain is not taken"
    assert training_precision(network, data, BATCH, CPU, amp=False).dtype is None
    training_precision(network, data, 8, CPU, amp=True)  # another batch shape: measured beside the kept rates
    kept = json.loads(precision_file().read_text())
    assert len(kept) == 2 and kept[probe_key(network, (BATCH, 3, 16, 16))] == {"float32": 10.0, "bfloat16": 10.5}

    precision_file().write_text("{damaged")
    training_precision(network, data, BATCH, CPU, amp=True)
    assert set(json.loads(precision_file().read_text())[probe_key(network, (BATCH, 3, 16, 16))]) == {
        "float32",
        "bfloat16",
    }, "a damaged file is measured again"


def test_a_head_on_stored_features_trains_in_float32_whatever_amp_says() -> None:
    generator = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    train = TensorDataset(torch.eye(3, 8)[labels] * 3 + torch.randn(60, 8, generator=generator), labels)
    val = TensorDataset(train.tensors[0][:30] + 0.1, labels[:30])
    histories = []
    for amp in (True, False):
        torch.manual_seed(0)
        result = fit(nn.Linear(8, 3), train, val, train_config(amp=amp, epochs=3, batch_size=16), CPU)
        histories.append(result.history)
        assert result.precision == "float32"
    assert histories[0] == histories[1]
    assert not precision_file().exists(), "nothing to measure"


@needs_bfloat16
def test_training_steps_run_in_bfloat16_where_chosen_and_validation_in_float32() -> None:
    train, val = images(96, 1), images(48, 2)
    keep_rates(small_cnn(), train, float32=10.0, bfloat16=20.0)
    results = {}
    for amp in (True, False):
        network = small_cnn()
        results[amp] = fit(network, train, val, train_config(epochs=4, batch_size=BATCH, lr=0.01, seed=0, amp=amp), CPU)
        kept = results[amp].history[results[amp].best_epoch - 1]
        network.eval()
        val_loss, _ = run_epoch(network, [val.tensors], nn.CrossEntropyLoss(), MixedPrecision(CPU))
        assert val_loss == pytest.approx(kept.val_loss, rel=1e-6), "the kept epoch's val loss is a float32 one"
    assert results[True].precision == "bfloat16" and results[False].precision == "float32"
    bf16_losses = [epoch.train_loss for epoch in results[True].history]
    assert bf16_losses != [epoch.train_loss for epoch in results[False].history]
    assert all(map(torch.isfinite, torch.tensor(bf16_losses))) and bf16_losses[-1] < bf16_losses[0]
    assert results[True].details()["precision"] == "bfloat16"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_always_autocasts() -> None:
    chosen = training_precision(small_cnn(), images(16, 0), BATCH, torch.device("cuda"), amp=True)
    assert chosen.dtype in (torch.bfloat16, torch.float16)
    assert chosen.grad_scaler().is_enabled() == (chosen.dtype == torch.float16)

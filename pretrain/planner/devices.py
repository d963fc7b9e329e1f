"""The accelerators the planner knows: memory, peak dense FLOP/s and link bandwidths.

Peak FLOP/s come from :data:`pretrain.flops.PEAK_FLOPS` (the table MFU is logged against), so a plan's MFU and a
run's MFU share one denominator. Memory is what ``nvidia-smi`` / ``rocm-smi`` report as the device's total (the
usable memory is less: the CUDA context and the allocator's fragmentation take some, which the planner's headroom
covers). Bandwidths are per GPU and per direction, from the vendors' data sheets: ``intra_node`` over NVLink /
Infinity Fabric / PCIe between the GPUs of one node, ``inter_node`` over the node's network (the common
configuration: one 400 Gb/s NIC per H100/H200/B200, one 200 Gb/s NIC per A100). Collectives reach a fraction of
these (``BUS_EFFICIENCY``).
"""

from __future__ import annotations

from dataclasses import dataclass

from pretrain.core.errors import ConfigError

GiB = 2**30
GB = 1e9

# What NCCL's ring all-reduce and all-gather reach of the nominal link bandwidth ("bus bandwidth" in nccl-tests).
BUS_EFFICIENCY = 0.75


@dataclass(frozen=True)
class Device:
    name: str
    table_name: str  # the key of pretrain.flops.PEAK_FLOPS
    memory_bytes: float
    intra_node_bw: float  # bytes/s, per GPU, per direction
    inter_node_bw: float  # bytes/s, per GPU, per direction
    gpus_per_node: int = 8

    def peak_flops(self, precision: str) -> float:
        from pretrain.flops import PEAK_FLOPS  # imports torch: not needed to name a device (slurm.gpu's check)

        peak = PEAK_FLOPS[self.table_name].get(precision) or 0.0
        if not peak:
            raise ConfigError(f"--gpu {self.name} has no dense {precision} peak in pretrain.flops.PEAK_FLOPS; "
                              f"choose another trainer.precision")
        return peak


MiB = 2**20
DEVICES: dict[str, Device] = {d.name: d for d in (
    Device("h100", "H100 SXM", 81559 * MiB, 450 * GB, 50 * GB),
    Device("h100-pcie", "H100 PCIe", 81559 * MiB, 300 * GB, 25 * GB),
    Device("h200", "H200", 143771 * MiB, 450 * GB, 50 * GB),
    Device("gh200", "GH200", 97871 * MiB, 450 * GB, 50 * GB, gpus_per_node=4),
    Device("b200", "B200", 183359 * MiB, 900 * GB, 50 * GB),
    Device("a100", "A100", 81920 * MiB, 300 * GB, 25 * GB),
    Device("a100-40gb", "A100", 40960 * MiB, 300 * GB, 25 * GB),
    Device("a800", "A800", 81920 * MiB, 200 * GB, 25 * GB),
    Device("l40s", "L40S", 46068 * MiB, 32 * GB, 12.5 * GB),
    Device("l4", "L4", 23034 * MiB, 32 * GB, 12.5 * GB),
    Device("a10g", "A10G", 23028 * MiB, 16 * GB, 12.5 * GB, gpus_per_node=4),
    Device("v100", "V100", 32768 * MiB, 150 * GB, 12.5 * GB),
    Device("mi300x", "MI300X", 196592 * MiB, 448 * GB, 50 * GB),
    Device("mi250x", "MI250X", 65520 * MiB, 200 * GB, 25 * GB),
)}


def get_device(name: str) -> Device:
    key = name.lower().replace("_", "-").replace(" ", "-")
    if key not in DEVICES:
        raise ConfigError(f"--gpu {name!r} is not known; expected one of {', '.join(DEVICES)}")
    return DEVICES[key]

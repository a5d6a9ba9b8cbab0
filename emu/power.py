"""Power: chips, hosts, network (switches, optics, NICs) and facility, per step and at full load.

Per chip, the accelerator draws idle power plus a share of its dynamic range set by what it
does during the step (fractions of step time):

    P_chip = idle + (tdp - idle) * (matmul_power * f_matmul + memory_power * f_memory
                                    + comm_power * f_exposed_comm)

Everything else (CPUs, fans/DRAM/boards, switch ASICs, transceivers, NICs) is attributed per
chip and drawn at its configured power. DC load becomes IT power through the PSU efficiency;
facility power multiplies by PUE:

    P_IT = n_chips * (P_chip + P_host + P_network) / psu_efficiency,   P_facility = PUE * P_IT

>>> from emu.topology import example_system
>>> p = full_load_power(example_system())
>>> round(float(p.it_w) / 1e3, 2)   # 8 x (700 + 87.5 + 300 + 65 + 16 + 25) / 0.95, kW
10.05
"""

from __future__ import annotations

from emu._backend import jnp
from emu.numerics import clip01, safe_div
from emu.struct import dataclass
from emu.topology import System

__all__ = ["PowerBreakdown", "step_power", "full_load_power", "network_w_per_chip"]

Array = jnp.ndarray


@dataclass
class PowerBreakdown:
    """Watts for the chips in use (IT side is after PSU losses). `it_w` is the sum of the
    parts / psu_efficiency; `facility_w` = pue * it_w."""

    chips_w: Array
    cpus_w: Array
    host_other_w: Array
    switches_w: Array
    optics_w: Array
    nics_w: Array
    psu_loss_w: Array
    it_w: Array
    facility_w: Array


def network_w_per_chip(system: System):
    """(switches, optics, NICs) watts attributed to one chip, summed over tiers:
    sum_k switch_w_per_chip, sum_k optics_per_chip * optic_w, sum_k nic_w_per_chip."""
    sw = sum(t.switch_w_per_chip for t in system.tiers)
    op = sum(t.optics_per_chip * t.optic_w for t in system.tiers)
    nic = sum(t.nic_w_per_chip for t in system.tiers)
    return sw, op, nic


def _breakdown(system: System, chip_w, n_chips) -> PowerBreakdown:
    h = system.host
    sw, op, nic = network_w_per_chip(system)
    parts = [
        n_chips * chip_w,
        n_chips * h.cpus_per_chip * h.cpu_w,
        n_chips * h.other_w_per_chip,
        n_chips * sw,
        n_chips * op,
        n_chips * nic,
    ]
    dc = sum(parts)
    eta = system.facility.psu_efficiency
    it = safe_div(dc, eta)
    # the loss as dc (1 - eta) / eta, not it - dc: the difference of two near-equal float32
    # numbers carried ~20x their rounding (2e-6 relative under the batch programs' fast math)
    loss = dc * safe_div(1.0 - eta, eta)
    return PowerBreakdown(
        chips_w=parts[0],
        cpus_w=parts[1],
        host_other_w=parts[2],
        switches_w=parts[3],
        optics_w=parts[4],
        nics_w=parts[5],
        psu_loss_w=loss,
        it_w=it,
        facility_w=system.facility.pue * it,
    )


def full_load_power(system: System, n_chips=None) -> PowerBreakdown:
    """Nameplate-style power of `n_chips` chips (default: one system) with every chip at
    TDP (module doc), in watts. Source of the form: vendors' node maximum power (configs/
    README.md shows the sum per catalog system)."""
    n = system.n_chips if n_chips is None else n_chips
    return _breakdown(system, system.chip.tdp_w, n)


def step_power(system: System, n_chips, *, matmul_frac, memory_frac, comm_frac):
    """Average power over a step of `n_chips` chips (module doc), in watts.

    Args: matmul_frac, memory_frac, comm_frac the shares of step time the chips spend in
      matmuls, memory-bound kernels and exposed communication (the rest is idle, e.g.
      bubbles); the activity matmul_power * f_matmul + memory_power * f_memory +
      comm_power * f_comm is clipped to [0, 1].
    Returns: a PowerBreakdown (chips, CPUs, other host parts, switches, optics, NICs, PSU
      loss, IT and facility watts).
    """
    c = system.chip
    activity = clip01(
        c.matmul_power * matmul_frac + c.memory_power * memory_frac + c.comm_power * comm_frac
    )
    chip_w = c.idle_w + (c.tdp_w - c.idle_w) * activity
    return _breakdown(system, chip_w, n_chips)

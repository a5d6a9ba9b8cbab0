"""Fast paths around `emu.objective.evaluate`: one configuration in tens of microseconds,
batches that compute and move only the outputs asked for, and compiled programs kept on
disk so that a new process neither traces nor lowers them again.

Nothing here knows the physics: every function takes whatever `evaluate` computes, through
the leaves of its pytrees.

- `Evaluator(system, model, plan)` packs the float leaves of the three inputs into one flat
  float32 vector, once. Its call is one jitted function of that one array (no pytree
  flattening, no host-side checks) returning the requested outputs as one flat vector;
  `result` turns that vector back into a `RunResult` of numpy scalars; `batch` evaluates
  many rows that vary a few named leaves (`vary`), the others folded in as constants, in
  blocks, returning only the `outputs` asked for (XLA drops the rest of the program).
- `aot(fn)`: `jax.jit(fn)` whose compiled executables are also serialized to
  `emu.storage.cache_dir("aot")`, keyed by the source of the emu package, the JAX version,
  the backend and the structure of the arguments; a later process loads the executable
  (~0.2 s) instead of tracing, lowering and compiling it (~5 s for `evaluate`; JAX's own
  persistent cache skips only the compilation). Until the executable is on disk, a call
  runs eagerly (~1 s) unless EMU_AOT says otherwise (`AOT_MODES`).

>>> import emu
>>> s, m = emu.load_system("gb200_nvl72"), emu.load_model("llama3_8b")
>>> p = emu.make_plan(tp=8, dp=9, global_batch=72, seq_len=4096)
>>> ev = Evaluator(s, m, p, outputs=("step_time_s", "tokens_per_joule"))
>>> y = ev()  # the two outputs, float32
>>> bool(abs(y[0] - float(emu.evaluate(s, m, p).step_time_s)) <= 1e-6 * y[0])
True
"""

from __future__ import annotations

import atexit
import hashlib
import os
import pickle
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from emu import _backend
from emu.objective import evaluate as _evaluate
from emu.storage import atomic_write, cache_dir

__all__ = [
    "Evaluator",
    "leaf_names",
    "aot",
    "aot_mode",
    "cache_executables",
    "source_digest",
    "BLOCK",
    "BLOCK_COLUMNS",
    "repeated_outputs",
    "AOT_MODES",
    "ONE_COMPILE",
    "BATCH_COMPILE",
    "compile_with",
]

#: rows per compiled batch call of a one-output program (several outputs: BLOCK_COLUMNS;
#: `Evaluator.block`): large enough to amortise the per-call and per-fusion
#: overhead of XLA's CPU runtime and for XLA to split each fusion's loop over the cores
#: (it splits only loops its cost model deems large enough). Measured on 2 cores, session
#: 18 (a scratch script, Llama 3 70B plans on 144 GB200): step time alone 2.0e7 / 2.3e7 /
#: 3.4e7 / 3.0e7 configurations/s at 4,096 / 16,384 / 65,536 / 262,144 rows, the full
#: result 3.5e6 / 5.3e6 / 5.5-5.7e6 / 4.8e6 (before system and model were folded in,
#: session 12, 65,536 had been ~2x slower than 16,384 for the full result). In
#: `bench_eval.py --sections batch` beside 16,384: step time 2.75-2.95e7 -> 3.35-3.36e7/s,
#: the full result and the merge within their noise. Sweeps keep their own
#: (`emu.search._evaluate.BLOCK`: 65,536 was no faster there, and its peak memory higher)
BLOCK = 65536
#: rows per block of `Evaluator.batch`'s program of several outputs: smaller than BLOCK,
#: so each block's ~50 output arrays are still in cache when the host copies them out:
#: the full result 1.04e7 against 9.7e6/s at 65,536 (medians of 5 interleaved runs,
#: session 20, a scratch script, two blocks in flight; 1.04e7 against 9.4e6 with four)
BLOCK_COLUMNS = 32768
#: up to this many outputs, `Evaluator.batch` compiles one program per output
SPLIT = 4
#: blocks `Evaluator.batch` has in flight beyond the one it copies out
AHEAD = 2
#: XLA options of the single-configuration executable (`Evaluator.__call__`): with XLA's
#: loop emitters instead of its fusion emitters its ~200 scalar fusions took 0.89x the
#: time (GPT-3 175B on 1,024 A100, `experiments/bench_eval.py --sections options`: both
#: executables in one process, 60 interleaved rounds of 100 calls, 2 cores); batch programs
#: take BATCH_COMPILE
ONE_COMPILE = {"xla_cpu_use_fusion_emitters": False}
#: XLA options of batch programs (`Evaluator.batch`, the sweep's blocks):
#: - 512-bit vectors where the CPU has them (XLA's CPU default prefers 256) ran the
#:   step-time and full-result programs 1.15x and 1.19x faster (same values; `bench_eval.py
#:   --sections options`, 2 cores with AVX-512); a CPU without them compiles the same
#:   program as before;
#: - LLVM may reassociate, contract into fused multiply-adds and ignore the sign of zero
#:   (XLA's fast math with NaNs, infinities, divisions and library functions honoured: every
#:   division and exp/log/sqrt stays IEEE-exact, a NaN or an infinity still propagates).
#:   Since the batch programs fold system and model in (session 17) they are bound by
#:   arithmetic, not memory, and this ran the step-time program 2.5x and the full result
#:   1.35x faster (session 19, `bench_eval.py --sections batch`, two interleaved rounds
#:   beside the previous commit). Values move by a few ulp (at most 4.8e-7 relative over
#:   131,072 Llama 3 70B plans, a scratch check); the plan's integer steps
#:   (`emu.parallelism._ceil`) have a 1e-4 slack, far above that.
BATCH_COMPILE = {
    "xla_cpu_prefer_vector_width": 512,
    "xla_cpu_enable_fast_math": True,
    "xla_cpu_fast_math_honor_nans": True,
    "xla_cpu_fast_math_honor_infs": True,
    "xla_cpu_fast_math_honor_division": True,
    "xla_cpu_fast_math_honor_functions": True,
}
#: run `Evaluator.__call__` on a synchronous CPU client of its own when JAX's CPU dispatch is
#: asynchronous (JAX's default): the default client hands every call to a worker thread and
#: back, which cost more than the program itself (GPT-3 175B on 1,024 A100, 2 cores, session
#: 17: 25-38 us per call on the synchronous client against 65-74 us on the default one in
#: the same processes, identical values; `experiments/bench_eval.py --sections one`).
#: False: always the default client.
SYNC_ONE = True


class _SyncOne:
    """The single-configuration executable on a synchronous PjRt CPU client (one per
    process, `_sync_cpu_client`): `__call__(x)` runs it in the caller's thread and returns
    a NumPy vector (an array of this private client would not mix with the default
    client's arrays).

    JAX's CPU dispatch mode is one setting per process, read when its CPU client is made,
    and its default (asynchronous) suits sweeps, whose blocks overlap with the host's work;
    a caller evaluating one configuration at a time waits for each result, so the thread
    hand-off is pure overhead. The executable bypasses JAX's compilation caches, so it is
    kept on disk itself (`cache_dir("aot")`, keyed by the program's text, the options and
    the JAX version; EMU_AOT=off: not kept), and a loaded one must run before it is used.
    This uses JAX's internal client API (`jax._src`): where the installed JAX lacks it,
    building this raises and `Evaluator` keeps the default client."""

    def __init__(self, lowered, x0: np.ndarray):
        from jax._src import core
        from jax._src.lib import _jax
        from jax._src.lib import xla_client as xc
        from jax.sharding import SingleDeviceSharding

        client = _sync_cpu_client()
        self._dev = client.local_devices()[0]
        self.sharding = SingleDeviceSharding(self._dev)
        self._aval = core.ShapedArray(np.shape(x0), np.dtype(np.float32))
        self._put = _jax.batched_device_put
        self.x0 = self.put(x0)
        devices = xc.DeviceList((self._dev,))
        text = lowered.as_text()
        key = hashlib.sha256(
            f"{text}|{sorted(ONE_COMPILE.items())}|{jax.__version__}".encode()
        ).hexdigest()[:32]
        path = cache_dir("aot") / f"sync-one-{key}.bin"
        keep = aot_mode() != "off"
        self._exe = None
        if keep and path.exists():
            try:
                exe = client.deserialize_executable(path.read_bytes(), devices, _one_options())
                exe.execute([self.x0])  # a file without its code fails here, not later
                self._exe = exe
            except Exception:  # noqa: BLE001  (stale or foreign file: compile it again)
                self._exe = None
        if self._exe is None:
            self._exe = _compile_sync(client, text, devices)
            if keep:
                try:
                    path.parent.mkdir(parents=True, exist_ok=True)
                    with atomic_write(path) as fh:
                        fh.write(client.serialize_executable(self._exe))
                except Exception:  # noqa: BLE001  (read-only cache: compile next time)
                    pass

    def put(self, x) -> jax.Array:
        """`x` (any float32 vector of the packed length) as an array of this client."""
        a = np.asarray(x, np.float32)
        if a.shape != self._aval.shape:
            raise ValueError(
                f"Evaluator: packed inputs of shape {a.shape}, this Evaluator takes "
                f"{self._aval.shape}; build them with ev.pack(system, model, plan)."
            )
        return self._put(self._aval, self.sharding, [a], [self._dev])

    def __call__(self, x=None) -> np.ndarray:
        if x is None:
            x = self.x0
        elif getattr(x, "sharding", None) is not self.sharding:
            x = self.put(x)
        return np.asarray(self._exe.execute([x])[0])


def _one_options(options: dict | None = None):
    from jax._src import compiler

    opts = ONE_COMPILE if options is None else options
    return compiler.get_compile_options(
        num_replicas=1, num_partitions=1, env_options_overrides=dict(opts)
    )


def _compile_sync(client, text: str, devices):
    """`client.compile_and_load` with ONE_COMPILE, dropping any option the installed XLA
    does not know (as `compile_with`)."""
    return _known_options(
        lambda opts: client.compile_and_load(text, devices, _one_options(opts)), ONE_COMPILE
    )


_SYNC_CLIENT: list = []
_SYNC_LOCK = threading.Lock()


def _sync_cpu_client():
    """A synchronous PjRt CPU client, made once per process (~1 ms)."""
    with _SYNC_LOCK:
        if not _SYNC_CLIENT:
            from jax._src.lib import xla_client as xc

            _SYNC_CLIENT.append(xc.make_cpu_client(asynchronous=False))
    return _SYNC_CLIENT[0]


def _async_cpu() -> bool:
    """True when JAX runs on the CPU with its asynchronous CPU dispatch (its default)."""
    try:
        return jax.default_backend() == "cpu" and bool(
            jax.config.read("jax_cpu_enable_async_dispatch")
        )
    except Exception:  # noqa: BLE001  (a JAX without the option: its dispatch is synchronous)
        return False


def compile_with(lowered, options: dict):
    """`lowered.compile(compiler_options=options)`, dropping any option the installed XLA
    does not know (an older or newer jaxlib may lack one: the program is the same, only its
    speed differs)."""
    return _known_options(lambda opts: lowered.compile(compiler_options=opts), options)


#: options that are only safe together with others: XLA's fast math without the flags that
#: keep NaNs, infinities, divisions and functions exact would change results, so an XLA
#: that lacks one of them compiles without fast math
_NEEDS = {
    "xla_cpu_enable_fast_math": (
        "xla_cpu_fast_math_honor_nans",
        "xla_cpu_fast_math_honor_infs",
        "xla_cpu_fast_math_honor_division",
        "xla_cpu_fast_math_honor_functions",
    )
}


def _known_options(compile_fn: Callable, options: dict):
    """`compile_fn(options)`, retried without each option XLA says it does not know (and
    without any option whose companions in _NEEDS were dropped)."""
    opts = dict(options)
    while True:
        for k, needs in _NEEDS.items():
            if k in opts and any(n in options and n not in opts for n in needs):
                opts.pop(k)
        try:
            return compile_fn(opts)
        except Exception as e:  # noqa: BLE001  (XLA raises its own runtime error type)
            msg = str(e)
            unknown = [k for k in opts if k in msg] if "No such compile option" in msg else []
            if not unknown:
                raise
            for k in unknown:
                opts.pop(k)


def _path_name(path) -> str:
    parts = []
    for k in path:
        for attr in ("name", "key", "idx"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return ".".join(parts)


def leaf_names(tree, prefix: str = "") -> list[str]:
    """Dotted names of the leaves of `tree`, in `jax.tree_util` order (`memory.total_bytes`,
    `chip.hbm_bytes_per_s`, `tiers.0.bytes_per_s`)."""
    paths = jax.tree_util.tree_flatten_with_path(tree)[0]
    return [prefix + _path_name(p) for p, _ in paths]


class Evaluator:
    """`evaluate` of one (system, model, plan) structure on packed inputs.

    `outputs`: names of RunResult leaves to compute (`leaf_names` of a RunResult, e.g.
    `step_time_s`, `memory.total_bytes`); None: all of them (then `result` rebuilds the
    RunResult). `vary`: names of input leaves (`plan.tp`, `system.chip.hbm_bytes_per_s`,
    `model.n_layers`) that `batch` takes per row; every other leaf is folded into the
    batch program as a constant (recompiled for another system or model).

    `ev()` evaluates the configuration given at construction; `ev(ev.pack(s, m, p))` another
    one of the same structure (same static fields), without recompiling."""

    def __init__(self, system, model, plan, *, outputs: Sequence[str] | None = None,
                 vary: Sequence[str] = ()):  # fmt: skip
        leaves, self._in_def = jax.tree_util.tree_flatten((system, model, plan))
        self.inputs = leaf_names(system, "system.") + leaf_names(model, "model.")
        self.inputs += leaf_names(plan, "plan.")
        self._shapes = [np.shape(x) for x in leaves]
        self._sizes = [int(np.prod(s)) for s in self._shapes]
        self._offsets = np.concatenate([[0], np.cumsum(self._sizes)]).astype(int)
        self.x0 = self.pack(system, model, plan)
        shape = jax.eval_shape(_evaluate, system, model, plan)
        self._out_leaves, self._out_def = jax.tree_util.tree_flatten(shape)
        self._rebuild = _rebuilder(shape, self._out_def)
        self.all_outputs = leaf_names(shape)
        bad = [o for o in (outputs or ()) if o not in self.all_outputs]
        if bad:
            raise ValueError(
                f"Evaluator: unknown output '{bad[0]}'; known: {', '.join(self.all_outputs)}."
            )
        if outputs is not None and not list(outputs):
            raise ValueError("Evaluator: outputs is empty; name at least one, or None for all.")
        self.outputs = list(outputs) if outputs is not None else list(self.all_outputs)
        self._out_idx = [self.all_outputs.index(o) for o in self.outputs]
        bad = [v for v in vary if v not in self.inputs]
        if bad:
            raise ValueError(
                f"Evaluator: unknown input '{bad[0]}'; inputs are named system.<path>, "
                "model.<path> or plan.<path> (see Evaluator.inputs)."
            )
        bad = [v for v in vary if self._sizes[self.inputs.index(v)] != 1]
        if bad:
            raise ValueError(f"Evaluator: vary takes scalar leaves; '{bad[0]}' is an array.")
        self.vary = list(vary)
        self._vary_idx = np.array([self._offsets[self.inputs.index(v)] for v in vary], int)
        self._one = jax.jit(self._flat)
        self._one_c = None
        self._batch = None
        self._compiled: dict[int, Callable] = {}
        self._repeats: dict[int, tuple[set[int], dict[int, int]]] = {}

    def pack(self, system, model, plan) -> np.ndarray:
        """The float32 vector of the leaves of (system, model, plan), in `inputs` order."""
        leaves, tdef = jax.tree_util.tree_flatten((system, model, plan))
        if tdef != self._in_def:
            raise ValueError(
                "Evaluator.pack: the inputs differ in structure (static fields: names, "
                "phase, precision, number of tiers) from the Evaluator's; build another one."
            )
        return np.concatenate([np.asarray(x, np.float32).ravel() for x in leaves])

    def _unpack(self, x):
        o = self._offsets
        leaves = [x[o[i]] if not s else x[o[i] : o[i + 1]].reshape(s)
                  for i, s in enumerate(self._shapes)]  # fmt: skip
        return jax.tree_util.tree_unflatten(self._in_def, leaves)

    def _outputs(self, r) -> list:
        leaves = jax.tree_util.tree_leaves(r)
        return [jnp.asarray(leaves[i], jnp.float32).reshape(()) for i in self._out_idx]

    def _flat(self, x):
        # the vector is built by one select per output over its slot index, not by
        # jnp.stack: XLA's CPU backend fuses the selects with each output's last operations
        # into one loop, where a concatenate of scalars left each output a fusion of its own
        # (GPT-3's full result: 204 -> 189 fusions, 22.9-23.1 -> 20.1-20.6 us per call in
        # bench_eval's asynchronous processes; XLA's regrouping may move a value by an ulp)
        outs = self._outputs(_evaluate(*self._unpack(x)))
        slot = jnp.arange(len(outs))
        vec = jnp.zeros(len(outs), jnp.float32)
        for j, v in enumerate(outs):
            vec = jnp.where(slot == j, v, vec)
        return vec

    def __call__(self, x=None) -> np.ndarray | jax.Array:
        """The `outputs` of packed inputs `x` (default: the construction's) as one float32
        vector: a NumPy array on emu's synchronous CPU client (below), else a device array
        (`np.asarray` it, or index it). The compiled executable is
        called directly: no pytree flattening, no jit cache lookup (~10 us less than a
        jitted call on CPU), compiled with ONE_COMPILE. On the CPU under JAX's default
        asynchronous dispatch it runs on a synchronous CPU client of its own (`SYNC_ONE`,
        `_SyncOne`): JAX's default client would hand the call to a worker thread and
        back, which took longer than the program (`experiments/bench_eval.py --sections
        one` times every path). Pass `ev.device(ev.pack(...))` to skip the transfer of
        the inputs as well."""
        if self._one_c is None:
            self._compile_one()
        return self._one_c(self._x0d if x is None else x)

    def device(self, x) -> jax.Array:
        """Packed inputs `x` (`pack`) as an array of the device `__call__` runs on: passing
        it saves the transfer of the inputs on every call. On emu's synchronous CPU client
        the array belongs to that client: pass it to this Evaluator's calls only."""
        if self._one_c is None:
            self._compile_one()
        if isinstance(self._one_c, _SyncOne):
            return self._one_c.put(x)
        return jnp.asarray(x, jnp.float32)

    def _compile_one(self) -> None:
        lowered = self._one.lower(jax.ShapeDtypeStruct(self.x0.shape, jnp.float32))
        if SYNC_ONE and _async_cpu():
            aot_mode()  # a bad EMU_AOT is an error, not a reason to fall back below
            try:
                self._one_c = _SyncOne(lowered, self.x0)
                self._x0d = None  # _SyncOne keeps its own copy of x0
                return
            except Exception:  # noqa: BLE001  (JAX's internal API moved: the default client)
                pass
        self._x0d = jnp.asarray(self.x0)
        self._one_c = compile_with(lowered, ONE_COMPILE)

    def result(self, x=None):
        """The full RunResult (numpy float32 leaves) of packed inputs `x`; needs
        `outputs=None`."""
        if len(self._out_idx) != len(self.all_outputs):
            raise ValueError("Evaluator.result needs every output; build it with outputs=None.")
        return self._rebuild(list(np.asarray(self(x))))

    def _row(self, v, idx):
        # each input leaf is the varied value or a constant: XLA folds everything that
        # depends on constants alone (most of the system and model) and never builds a
        # [block, inputs] array (a scatter into x0 did: ~0.5 KB per row written and read)
        o, pos = self._offsets, {int(k): j for j, k in enumerate(self._vary_idx)}
        leaves = [v[pos[o[i]]].reshape(s) if o[i] in pos
                  else jnp.asarray(self.x0[o[i] : o[i + 1]].reshape(s), jnp.float32)
                  for i, s in enumerate(self._shapes)]  # fmt: skip
        inputs = jax.tree_util.tree_unflatten(self._in_def, leaves)
        leaves = self._outputs(_evaluate(*inputs))
        return tuple(leaves[i] for i in idx)

    def _groups(self) -> list[tuple[int, ...]]:
        """Output indices per batch program: one program per output up to SPLIT outputs
        (XLA's CPU backend fuses a single-output program into one loop; several outputs
        split it into dozens of fusions writing intermediates to memory), else one."""
        n = len(self.outputs)
        return [(j,) for j in range(n)] if n <= SPLIT else [tuple(range(n))]

    def batch_fn(self) -> list[Callable]:
        """The jitted batch programs (see `_groups`): f(values) -> tuple of arrays [n], one
        per output of its group (XLA computes only these). `values` are rows [n,
        len(vary)] for one-output programs and columns [len(vary), n] (one row per `vary`
        input, `columns`) for a program of several outputs: XLA fuses a one-output program
        into one loop that reads each row once, but splits a program of several outputs
        into ~90 fusions, each reading only the inputs it needs; from rows each of them read
        every input's cache lines, and the full result ran 1.6x slower (session 20, a
        scratch script: 90 against 56 ns per configuration, Llama 3 70B plans on 144
        GB200, 2 cores), while for step time alone the transposition on the host cost more
        than it saved (`bench_eval.py --sections batch`: 4.6-5.2e7 against 8.0-8.9e7/s)."""
        if self._batch is None:
            axis = 1 if self.columns else 0
            self._batch = [jax.jit(jax.vmap(lambda v, g=g: self._row(v, g), in_axes=axis))
                           for g in self._groups()]  # fmt: skip
        return self._batch

    @property
    def columns(self) -> bool:
        """True where the batch program takes its inputs as columns [len(vary), n] (a
        program of several outputs, `batch_fn`), False where it takes rows [n, len(vary)]."""
        return len(self._groups()[0]) > 1

    @property
    def block(self) -> int:
        """The default rows per block of `batch`: `BLOCK_COLUMNS` for a program of several
        outputs (`columns`), else `BLOCK`."""
        return BLOCK_COLUMNS if self.columns else BLOCK

    def compile_batch(self, block: int | None = None) -> list:
        """The batch programs compiled for blocks of `block` rows (cached; `batch` calls
        them on rows or columns, `columns`); each one's `cost_analysis()` counts the FLOPs
        and bytes of one block."""
        block = self.block if block is None else block
        if block not in self._compiled:
            shape = (len(self.vary), block) if self.columns else (block, len(self.vary))
            spec = jax.ShapeDtypeStruct(shape, jnp.float32)
            self._compiled[block] = [
                compile_with(f.lower(spec), BATCH_COMPILE) for f in self.batch_fn()
            ]
        return self._compiled[block]

    def _repeated(self, block: int) -> tuple[set[int], dict[int, int]]:
        """`repeated_outputs` of the one batch program of several outputs ((set(), {})
        for one-output programs), in `outputs` indices."""
        if not self.columns:
            return set(), {}
        if block not in self._repeats:
            try:
                text = self.compile_batch(block)[0].as_text()
            except Exception:  # noqa: BLE001  (no HLO text from this jaxlib: copy everything)
                text = ""
            self._repeats[block] = repeated_outputs(text or "", len(self.outputs))
        return self._repeats[block]

    def batch(self, values, *, block: int | None = None, out: np.ndarray | None = None
              ) -> np.ndarray:  # fmt: skip
        """`outputs` [n, len(outputs)] of n rows of `vary` values [n, len(vary)], in blocks
        of `block` rows (default `self.block`; compiled once per block size; the last block
        is padded).

        The array is column-major (each output's values contiguous: copying the blocks'
        outputs into rows of a row-major array, strided, took ~40% of a full result's
        time); `np.ascontiguousarray` it where row-major memory is needed. `out`: a
        float32 array [n, len(outputs)] to write into and return instead of a new one
        (column-major is fastest, e.g. `np.empty((len(outputs), n), np.float32).T`): a
        new array's memory is zeroed by the kernel on first touch, which cost ~25 ns per
        configuration of the full result's ~100 (2 cores, session 20), so a caller that
        evaluates batch after batch saves it by passing the same `out`.

        Outputs the compiled program computes as constants or as copies of another output
        (`repeated_outputs`) are filled once or copied from that output's column, not
        copied from the program's result. Blocks are dispatched one after another with up
        to `AHEAD` of them in flight beyond the one this thread copies out, so the cores
        compute while it copies, and no more than `AHEAD + 1` blocks' program outputs are
        held at once (before, every block's were held until the end); the result and the
        float32 copy of `values` still grow with n."""
        values = np.asarray(values, np.float32).reshape(-1, len(self.vary))
        n, k = len(values), len(self.outputs)
        if out is None:
            out = np.empty((k, n), np.float32).T
        elif not (isinstance(out, np.ndarray) and out.dtype == np.float32
                  and out.shape == (n, k) and out.flags.writeable):  # fmt: skip
            got = getattr(out, "shape", None), getattr(out, "dtype", type(out).__name__)
            raise ValueError(
                f"Evaluator.batch: out must be a writable float32 array of shape ({n}, {k}) "
                f"(rows x outputs), got shape {got[0]} and dtype {got[1]}; or leave it out."
            )
        cols = out.T  # [outputs, n]: out[:, j] is row j of this view
        block = min(self.block if block is None else block, max(n, 1))
        fns, groups = self.compile_batch(block), self._groups()
        constant, same = self._repeated(block)
        pending: list = []

        def drain() -> None:
            s, results = pending.pop(0)
            rows = min(block, n - s)
            for g, arrays in zip(groups, results, strict=True):
                for j, c in zip(g, arrays, strict=True):
                    if j in constant:
                        if s == 0:  # the same in every row: one fill
                            cols[j] = np.asarray(c)[0]
                    elif j not in same:
                        cols[j, s : s + rows] = np.asarray(c)[:rows]
            for j, i in same.items():
                cols[j, s : s + rows] = cols[i, s : s + rows]

        for s in range(0, n, block):
            v = values[s : s + block]
            if len(v) < block:
                v = np.concatenate([v, np.repeat(v[:1], block - len(v), 0)])
            if self.columns:
                v = np.ascontiguousarray(v.T)  # [len(vary), block]: see batch_fn
            pending.append((s, [fn(v) for fn in fns]))  # asynchronous dispatch
            if len(pending) > AHEAD:
                drain()
        while pending:
            drain()
        return out


_HLO_NAME = re.compile(r"%[\w.\-]+")


def _balanced(text: str, i: int) -> int:
    """The index just past the parenthesis that closes the one at text[i]."""
    depth = 0
    for k in range(i, len(text)):
        depth += {"(": 1, ")": -1}.get(text[k], 0)
        if depth == 0:
            return k + 1
    return len(text)


def _hlo_instruction(line: str) -> tuple[str, str, str, list[str]] | None:
    """(name, type, opcode, operand names) of one instruction line of HLO text, else None."""
    head, sep, rest = line.strip().removeprefix("ROOT ").partition(" = ")
    if not sep or not head.startswith("%"):
        return None
    k = _balanced(rest, 0) if rest.startswith("(") else rest.find(" ")  # past the type
    if k < 0:
        return None
    typ, rest = rest[:k], rest[k:].lstrip()
    p = rest.find("(")
    if p <= 0:
        return None
    return head, typ, rest[:p], _HLO_NAME.findall(rest[p : _balanced(rest, p)])


def repeated_outputs(hlo_text: str, n_outputs: int) -> tuple[set[int], dict[int, int]]:
    """From the optimized HLO text of a compiled program whose result is a tuple of
    `n_outputs` arrays (`compiled.as_text()`): the outputs computed from constants alone
    (`constant`: the same value in every element, for a program vmapped over
    configurations) and the outputs that are copies of an earlier one (`same`: {output:
    earlier output}, through `copy` and `bitcast` of the same type and layout only). XLA
    writes each of them as an array of its own, folding (`x * 0`, `x * 1`) and common
    subexpressions having made them constants or copies. Only the ENTRY computation is
    read; an instruction with no operands other than `constant` counts as varying (an
    iota, a random number). (set(), {}) where the text is not as expected (no ENTRY, a
    name defined twice, a cycle, another number of outputs): the caller then copies every
    output (slower, never wrong)."""
    start = hlo_text.find("\nENTRY ")
    if start < 0:
        return set(), {}
    defs: dict[str, tuple[str, str, list[str]]] = {}
    root = None
    for line in hlo_text[start + 1 :].splitlines()[1:]:
        if line.strip() == "}":  # the end of ENTRY
            break
        parsed = _hlo_instruction(line)
        if parsed is None:
            continue
        name, typ, op, args = parsed
        if name in defs:
            return set(), {}
        defs[name] = (typ, op, args)
        if line.lstrip().startswith("ROOT "):
            root = name
    if root is None or defs[root][1] != "tuple" or len(defs[root][2]) != n_outputs:
        return set(), {}
    varying: dict[str, bool] = {}
    for name in defs:  # every instruction, operands first (iterative: no recursion limit)
        stack, open_ = [name], set()
        while stack:
            x = stack[-1]
            if x in varying:
                stack.pop()
                continue
            _, op, args = defs.get(x, ("", "parameter", []))  # unknown: as a parameter
            todo = [a for a in args if a not in varying]
            if todo:
                if x in open_:  # a cycle: not a program
                    return set(), {}
                open_.add(x)
                stack.extend(todo)
                continue
            varying[x] = op != "constant" and (not args or any(varying[a] for a in args))
            stack.pop()

    def origin(name: str) -> str:
        while defs[name][1] in ("copy", "bitcast") and len(defs[name][2]) == 1:
            a = defs[name][2][0]
            if a not in defs or defs[a][0] != defs[name][0]:  # a relayout or a reshape
                break
            name = a
        return name

    constant: set[int] = set()
    same: dict[int, int] = {}
    first: dict[str, int] = {}
    for j, name in enumerate(defs[root][2]):
        if name not in defs:
            return set(), {}
        o = origin(name)
        if not varying[o]:
            constant.add(j)
        elif o in first:
            same[j] = first[o]
        else:
            first[o] = j
    return constant, same


def _rebuilder(shape, treedef) -> Callable[[list], object]:
    """A function of the leaves of `shape` (a tree of dataclasses, as `jax.eval_shape`
    gives) that rebuilds the tree: `jax.tree_util.tree_unflatten(treedef, leaves)`, but
    without running each class's `__init__` (a frozen dataclass sets every field through
    `object.__setattr__`: 15-17 us for a RunResult's 52 leaves in a scratch timing, against
    ~24 us for evaluating it). Each node gets its fields from `shape`'s node (the static
    ones) and the leaves; a tree with any node that is not a dataclass whose children are
    its fields, or whose fields do not take every leaf, is unflattened by JAX."""
    import dataclasses

    paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(shape)[0]]

    def plan(node, prefix):
        if not (dataclasses.is_dataclass(node) and hasattr(node, "__dict__")):
            raise TypeError
        leaf, sub = [], []
        for f in dataclasses.fields(node):
            path = (*prefix, jax.tree_util.GetAttrKey(f.name))
            here = [i for i, p in enumerate(paths) if p[: len(path)] == path]
            if len(here) == 1 and len(paths[here[0]]) == len(path):
                leaf.append((f.name, here[0]))
            elif here:
                sub.append((f.name, plan(getattr(node, f.name), path)))
        return type(node), dict(vars(node)), leaf, sub

    def build(p, leaves):
        cls, static, leaf, sub = p
        obj = object.__new__(cls)
        d = obj.__dict__
        d.update(static)
        for name, i in leaf:
            d[name] = leaves[i]
        for name, q in sub:
            d[name] = build(q, leaves)
        return obj

    def used(p):
        _, _, leaf, sub = p
        return [i for _, i in leaf] + [i for _, q in sub for i in used(q)]

    try:
        root = plan(shape, ())
    except TypeError:  # a node that is not a dataclass
        root = None
    if root is None or sorted(used(root)) != list(range(len(paths))):
        return lambda leaves: jax.tree_util.tree_unflatten(treedef, leaves)
    return lambda leaves: build(root, leaves)


# --- executables on disk -----------------------------------------------------------------

_SOURCE = {}


def source_digest() -> str:
    """SHA-256 of every .py and .toml file of the emu package (what a compiled program of
    emu depends on besides its arguments' structure); computed once per process."""
    if "d" not in _SOURCE:
        root = Path(__file__).resolve().parent
        h = hashlib.sha256()
        for p in sorted(root.rglob("*")):
            if p.suffix in (".py", ".toml") and "__pycache__" not in p.parts:
                h.update(str(p.relative_to(root)).encode())
                h.update(p.read_bytes())
        _SOURCE["d"] = h.hexdigest()
    return _SOURCE["d"]


def _arg_key(args) -> str:
    leaves, tdef = jax.tree_util.tree_flatten(args)
    shapes = [(np.shape(x), str(np.asarray(x).dtype) if not hasattr(x, "dtype") else str(x.dtype))
              for x in leaves]  # fmt: skip
    return f"{tdef}|{shapes}"


class _Compiled:
    """A loaded or freshly compiled executable of `aot` (or the eager function), called
    like `jax.jit`'s compiled object."""

    def __init__(self, call):
        self._call = call

    def __call__(self, *args):
        return self._call(*args)


class _Lowered:
    def __init__(self, owner, args):
        self._owner, self._args = owner, args

    def compile(self):
        return self._owner._compiled(self._args)


#: how `aot` handles an executable that is not on disk yet (environment variable EMU_AOT):
#: "auto" evaluates eagerly (op by op: ~1 s for `evaluate`, against ~5 s to compile it) and,
#: on an interactive terminal only, compiles and stores the executable in a detached,
#: low-priority process for the next run; "eager" only evaluates eagerly; "sync" compiles
#: and stores it now; "off" is plain `jax.jit` (with JAX's persistent cache)
AOT_MODES = _backend.AOT_MODES
#: executables loaded or compiled in this process, by key
_MEM: dict[str, Callable] = {}
#: a background compilation older than this is presumed dead and may be started again
_PENDING_S = 600


def aot_mode() -> str:
    """EMU_AOT (AOT_MODES), default "auto"; EMU_NO_AOT=1 means "off"; another value is a
    ValueError (`emu._backend.aot_from_env`)."""
    return _backend.aot_from_env()


def aot_enabled() -> bool:
    """False when EMU_AOT=off (or EMU_NO_AOT is set): `aot` is then plain `jax.jit`."""
    return aot_mode() != "off"


class aot:  # noqa: N801  (used like jax.jit)
    """`jax.jit(fn)` with its executables also kept on disk (module doc). Call it, or
    `.lower(*args).compile()` as with `jax.jit`. An executable not on disk yet is handled
    by `aot_mode()`. The cache is silently skipped when the folder cannot be written or
    the backend cannot serialize; a stale, foreign or unloadable file is recompiled (the
    key covers the emu source, the JAX version, the backend and the arguments'
    structure). `fn` must be importable by `name` (module.qualname) for the background
    compilation. `eager=False`: a function called many times per process, or one with
    loops, that is slower op by op than compiled: on a miss it is compiled and stored now."""

    def __init__(self, fn: Callable, *, name: str | None = None, folder: Path | None = None,
                 eager: bool = True):  # fmt: skip
        self._fn, self._jit, self._eager = fn, jax.jit(fn), eager
        self._name = name or f"{fn.__module__}.{getattr(fn, '__qualname__', fn)}"
        self._target = f"{fn.__module__}:{getattr(fn, '__qualname__', '')}"
        self._folder = folder
        self._mem = _MEM  # one executable per key in a process, whichever aot loaded it

    def _path(self, key: str) -> Path:
        folder = self._folder or cache_dir("aot")
        return folder / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".bin")

    def _key(self, args) -> str:
        dev = jax.devices()[0]
        return "|".join([self._name, source_digest(), jax.__version__, dev.platform,
                         getattr(dev, "device_kind", ""), _arg_key(args)])  # fmt: skip

    def _load(self, key: str, args):
        """The executable stored under `key`, checked by one call; None if absent or bad."""
        from jax.experimental import serialize_executable as se

        try:
            blob = pickle.loads(self._path(key).read_bytes())
            if blob.get("key") != key:
                return None
            call = se.deserialize_and_load(blob["exe"], blob["in_tree"], blob["out_tree"])
            jax.block_until_ready(call(*args))  # a file that loads but cannot run: recompile
            return call
        except Exception:  # noqa: BLE001  (absent, stale, foreign or unreadable: recompile)
            return None

    def _compile_and_store(self, key: str, args):
        """Compile now and store the executable (best effort)."""
        from jax.experimental import serialize_executable as se

        # NB: an executable that JAX's persistent cache loaded serializes without its code
        # on CPU (jax 0.10: "Function ... not found" when called in another process); the
        # trial call of `_load` catches such a file, and it is rewritten from a fresh
        # compilation in a process where that cache is off (as in `emu run`)
        call = self._jit.lower(*args).compile()
        try:
            exe, in_tree, out_tree = se.serialize(call)
            path = self._path(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            data = {"key": key, "exe": exe, "in_tree": in_tree, "out_tree": out_tree}
            with atomic_write(path) as fh:
                fh.write(pickle.dumps(data))
        except Exception:  # noqa: BLE001  (read-only cache, backend without serialization)
            pass
        return call

    def _compile_later(self, key: str, args) -> None:
        """Compile and store in a detached, low-priority process (once per key: a
        `.pending` marker, created exclusively, guards against a second one)."""
        path = self._path(key)
        pending = path.with_suffix(".pending")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if pending.exists() and time.time() - pending.stat().st_mtime > _PENDING_S:
                pending.unlink()  # a dead background compilation
            fd = os.open(pending, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            with os.fdopen(fd, "wb") as fh:
                pickle.dump({"target": self._target, "name": self._name,
                             "folder": str(self._folder) if self._folder else None,
                             "args": jax.device_get(args)}, fh)  # fmt: skip
            _LATER.append(str(pending))
            if len(_LATER) == 1:  # spawned at exit: the eager answer keeps both cores
                atexit.register(_spawn_later)
        except (OSError, pickle.PicklingError, TypeError, AttributeError):
            pass  # already pending, unwritable or unpicklable: stay eager

    def _compiled(self, args):
        mode = aot_mode()
        if mode == "off":
            return _Compiled(self._jit.lower(*args).compile())
        key = self._key(args)
        if key in self._mem:
            return _Compiled(self._mem[key])
        call = self._load(key, args)
        if call is None and mode in ("auto", "eager") and self._eager:
            if mode == "auto" and sys.stdout.isatty():
                self._compile_later(key, args)
            return _Compiled(self._fn)  # eager: not remembered, the file may appear later
        if call is None:
            call = self._compile_and_store(key, args)
        self._mem[key] = call
        return _Compiled(call)

    def lower(self, *args) -> _Lowered:
        return _Lowered(self, args)

    def __call__(self, *args):
        return self._compiled(args)(*args)


_LATER: list[str] = []


def _spawn_later() -> None:
    """At exit: one detached, low-priority process compiles every pending executable."""
    try:
        subprocess.Popen(
            [sys.executable, "-c", "import sys, emu.fast as f; f._background(*sys.argv[1:])",
             *_LATER],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env={**os.environ, "EMU_AOT": "sync"},
        )  # fmt: skip
    except OSError:
        for p in _LATER:
            Path(p).unlink(missing_ok=True)


def _background(*pending: str) -> None:
    """The detached compilation of `aot._compile_later`: per marker, load its function and
    arguments, compile and store, remove the marker."""
    os.nice(10)
    for p in pending:
        try:
            _compile_job(p)
        except Exception:  # noqa: BLE001  (best effort: the next run stays eager)
            pass


def _compile_job(pending: str) -> None:
    import importlib

    try:
        job = pickle.loads(Path(pending).read_bytes())
        module, qualname = job["target"].split(":")
        fn = importlib.import_module(module)
        for part in qualname.split("."):
            fn = getattr(fn, part)
        folder = Path(job["folder"]) if job["folder"] else None
        a = aot(fn, name=job["name"], folder=folder)
        a._compile_and_store(a._key(job["args"]), job["args"])
    finally:
        Path(pending).unlink(missing_ok=True)


def cache_executables(module, *names: str, plain: tuple[str, ...] = (), eager: bool = True) -> None:
    """Replace each `module.<name>` that is a `jax.jit` function by `aot` of the function it
    wraps (the same program; executables kept on disk), and each of `plain` (a traceable
    function the module calls eagerly, op by op) by `aot` of it. Names that are absent, or
    not jitted (`names`) or not callable (`plain`), are left alone, so a caller survives a
    module that changes."""
    for name in names:
        f = getattr(module, name, None)
        inner = getattr(f, "__wrapped__", None)
        if inner is None or isinstance(f, aot) or not hasattr(f, "lower"):
            continue
        setattr(module, name, aot(inner, eager=eager))  # keyed by the function: shared
    for name in plain:
        f = getattr(module, name, None)
        if callable(f) and not isinstance(f, aot) and not hasattr(f, "lower"):
            setattr(module, name, aot(f, eager=eager))

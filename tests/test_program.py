"""emu.program: HLO parsing, op table, placement, cost (jit/vmap/grad), the flax reference
program against emu.evaluate, and bad input. Programs that need N > 1 devices are traced in
a subprocess (this process has one CPU device)."""

import dataclasses
import json
import math
import textwrap
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import emu
from emu import program
from emu.program import hlo
from emu.program.cli import main_program
from emu.program.table import MeshInfo, build_table

BUILDERS = textwrap.dedent(
    '''
    import jax, jax.numpy as jnp
    from jax.sharding import NamedSharding, PartitionSpec as P

    def _mesh(shape, names):
        return jax.make_mesh(shape, names, axis_types=(jax.sharding.AxisType.Auto,) * len(shape))

    def collectives():
        """psum over 'model' (4 ranks, stride 1) and over 'data' (2 ranks, stride 4)."""
        mesh = _mesh((2, 4), ("data", "model"))

        def inner(x, w):
            y = jax.lax.psum(x @ w, "model")
            return y * jax.lax.psum(jnp.sum(y.astype(jnp.float32)), "data").astype(y.dtype)

        f = jax.shard_map(inner, mesh=mesh, in_specs=(P("data", "model"), P("model", None)),
                          out_specs=P("data", None))
        x = jax.ShapeDtypeStruct((64, 512), jnp.bfloat16,
                                 sharding=NamedSharding(mesh, P("data", "model")))
        w = jax.ShapeDtypeStruct((512, 256), jnp.bfloat16,
                                 sharding=NamedSharding(mesh, P("model", None)))
        return jax.jit(f), (x, w)

    def small_mesh():
        """A mesh of 4 of the process's devices."""
        mesh = jax.make_mesh((4,), ("x",), devices=jax.devices()[:4])
        x = jax.ShapeDtypeStruct((8, 8), jnp.float32, sharding=NamedSharding(mesh, P("x")))
        return jax.jit(lambda a: a * 2), (x,)
    '''
)

#: the consistency model (experiments/program_consistency.py --small): Llama widths, 16 layers
SMALL = dict(
    n_layers=16, d_model=2048, n_heads=16, n_kv_heads=8, d_ff=8192, vocab=32000, seq_len=2048
)


@pytest.fixture(scope="module")
def builders(tmp_path_factory):
    path = tmp_path_factory.mktemp("builders") / "builders.py"
    path.write_text(BUILDERS)
    return path


@pytest.fixture(scope="module")
def collective_program(builders):
    return program.trace_program(f"{builders}:collectives", devices=8)


@pytest.fixture(scope="module")
def reference_program():
    tp, dp = 4, 2
    prog = program.trace_program(
        "emu/examples/llama.py:train", devices=tp * dp, kwargs={"tp": tp, **SMALL, "batch": 2 * dp}
    )
    return prog, tp, dp


# ----------------------------------------------------------------------------- parsing


def test_single_matmul_flops_and_shape():
    m, k, n = 512, 1024, 256
    f = jax.jit(lambda a, b: a @ b)
    args = (
        jax.ShapeDtypeStruct((m, k), jnp.bfloat16),
        jax.ShapeDtypeStruct((k, n), jnp.bfloat16),
    )
    prog = program.trace(f, args)
    mm = [o for o in prog.table.ops if o.kind == "matmul"]
    assert len(mm) == 1
    assert prog.flops == 2.0 * m * n * k
    assert (mm[0].m, mm[0].n, mm[0].k, mm[0].precision) == (m, n, k, "bf16")
    assert prog.table.uncosted == []


def test_scan_costs_trip_count_times_body_with_or_without_known_trip_count():
    layers, b, d, e = 5, 64, 128, 32

    def f(xs, w):
        def body(c, x):
            return c + jnp.tanh(x @ w), None

        return jax.lax.scan(body, jnp.zeros((b, e), jnp.bfloat16), xs)[0]

    args = (
        jax.ShapeDtypeStruct((layers, b, d), jnp.bfloat16),
        jax.ShapeDtypeStruct((d, e), jnp.bfloat16),
    )
    prog = program.trace(jax.jit(f), args)
    assert prog.flops == layers * 2.0 * b * d * e
    mm = [o for o in prog.table.ops if o.kind == "matmul"]
    assert [o.count for o in mm] == [layers]
    # without XLA's known_trip_count the bound comes from the condition's compare
    assert '"known_trip_count":{"n":"5"}' in prog.traced.hlo
    text = prog.traced.hlo.replace('"known_trip_count":{"n":"5"}', '"unknown":{}')
    again = program.from_hlo(text, {"d": 1})
    assert again.flops == prog.flops and again.table.notes == []


def test_replica_group_spellings():
    assert hlo.replica_groups("{{0,1},{2,3}}") == [[0, 1], [2, 3]]
    assert hlo.replica_groups("[2,4]<=[8]") == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert hlo.replica_groups("[4,2]<=[2,4]T(1,0)") == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert hlo.replica_groups("mesh['a'=2,'b'=4] {'b'}") == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert hlo.replica_groups("mesh['a'=2,'b'=4] {'a'}") == [[0, 4], [1, 5], [2, 6], [3, 7]]
    # a transposed device order: axis_0 (4) is the inner axis of the devices
    text = "mesh['axis_0'=4,'axis_1'=1,'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_0'}"
    assert hlo.replica_groups(text) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert hlo.replica_groups("mesh['a'=8] {'a':(2)2}") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert hlo.replica_groups("{}", 4) == [[0, 1, 2, 3]]


def test_psum_over_mesh_axes(collective_program):
    prog = collective_program
    assert prog.n_devices == 8 and prog.mesh.axis_names == ("data", "model")
    assert prog.flops == 2.0 * 32 * 128 * 256  # the per-device (32, 128) @ (128, 256)
    rows = {o.axes: o for o in prog.table.ops if o.kind == "collective"}
    model, data = rows[("model",)], rows[("data",)]
    assert (model.collective, model.group_size, model.stride) == ("all-reduce", 4, 1)
    assert model.bytes == 32 * 256 * 2  # the bf16 partial sums (the CPU upcasts to f32)
    assert (data.collective, data.group_size, data.stride, data.role) == ("all-reduce", 2, 4, "dp")
    assert model.role == "tp"


def _synthetic(body: str, partitions: int = 1) -> str:
    return f"HloModule m, num_partitions={partitions}\n\n" + textwrap.dedent(body)


def test_async_pair_is_overlappable_and_custom_call_is_listed():
    text = _synthetic(
        """
        ENTRY %main (p0: bf16[1024,4096], p1: bf16[4096,4096]) -> (bf16[4096,4096], f32[16]) {
          %p0 = bf16[1024,4096]{1,0} parameter(0)
          %p1 = bf16[4096,4096]{1,0} parameter(1)
          %ags = (bf16[1024,4096]{1,0}, bf16[4096,4096]{1,0}) all-gather-start(%p0), AG_ATTRS
          %dot = bf16[1024,4096]{1,0} dot(%p0, %p1), DOT_ATTRS
          %agd = bf16[4096,4096]{1,0} all-gather-done(%ags)
          %cc = f32[16]{0} custom-call(%dot), custom_call_target="my_fancy_kernel"
          ROOT %t = (bf16[4096,4096]{1,0}, f32[16]{0}) tuple(%agd, %cc)
        }
        """,
        partitions=4,
    )
    text = text.replace("AG_ATTRS", "replica_groups=[1,4]<=[4], dimensions={0}")
    text = text.replace("DOT_ATTRS", "lhs_contracting_dims={1}, rhs_contracting_dims={0}")
    prog = program.from_hlo(text, {"x": 4})
    ag = next(o for o in prog.table.ops if o.kind == "collective")
    dot = next(i for i, o in enumerate(prog.table.ops) if o.kind == "matmul")
    assert ag.is_async and ag.window == (dot,) and ag.bytes == 4096 * 4096 * 2
    (un,) = prog.uncosted
    assert "my_fancy_kernel" in un["reason"]
    system = emu.load_system("dgx_h100")
    cost = prog.cost_fn()(system)
    t = np.asarray(cost.op_time_s)
    i = prog.table.ops.index(ag)
    expected = max(t[i] - t[dot], 0.0)
    assert float(cost.breakdown.exposed_comm_s) == pytest.approx(expected, rel=1e-5, abs=1e-9)
    # listed in the report, never dropped
    r = prog.estimate(system)[0]
    assert r.uncosted and r.uncosted[0]["name"] == "cc"


def test_gpu_gemm_custom_call_is_a_matmul():
    text = _synthetic(
        """
        ENTRY %main (a: bf16[1024,4096], b: bf16[4096,512]) -> bf16[1024,512] {
          %a = bf16[1024,4096]{1,0} parameter(0)
          %b = bf16[4096,512]{1,0} parameter(1)
          %g = (bf16[1024,512]{1,0}, s8[65536]{0}) custom-call(%a, %b), GEMM
          ROOT %r = bf16[1024,512]{1,0} get-tuple-element(%g), index=0
        }
        """
    )
    dims = (
        '"dot_dimension_numbers":{"lhs_contracting_dimensions":["1"],'
        '"rhs_contracting_dimensions":["0"],"lhs_batch_dimensions":[],"rhs_batch_dimensions":[]}'
    )
    gemm = 'custom_call_target="__cublas$gemm", backend_config={"gemm_backend_config":{' + dims
    prog = program.from_hlo(text.replace("GEMM", gemm + "}}"), {"d": 1})
    (mm,) = prog.table.ops
    assert (mm.kind, mm.m, mm.n, mm.k, mm.precision) == ("matmul", 1024, 512, 4096, "bf16")
    assert prog.flops == 2.0 * 1024 * 512 * 4096 and not prog.uncosted


def test_conditional_and_unknown_opcode():
    text = _synthetic(
        """
        %b0 (p: f32[64,64]) -> f32[64,64] {
          %p = f32[64,64]{1,0} parameter(0)
          ROOT %d = f32[64,64]{1,0} dot(%p, %p), lhs_contracting_dims={1}, rhs_contracting_dims={0}
        }

        %b1 (p: f32[64,64]) -> f32[64,64] {
          %p = f32[64,64]{1,0} parameter(0)
          ROOT %n = f32[64,64]{1,0} negate(%p)
        }

        ENTRY %main (i: s32[], x: f32[64,64]) -> f32[64,64] {
          %i = s32[] parameter(0)
          %x = f32[64,64]{1,0} parameter(1)
          %c = f32[64,64]{1,0} conditional(%i, %x, %x), branch_computations={%b0, %b1}
          ROOT %w = f32[64,64]{1,0} weird-new-op(%c)
        }
        """
    )
    prog = program.from_hlo(text, {"d": 1})
    (mm,) = [o for o in prog.table.ops if o.kind == "matmul"]
    assert mm.count == 0.5 and mm.precision == "tf32"
    assert any("weird-new-op" in u["reason"] for u in prog.uncosted)
    assert any("conditional" in n for n in prog.table.notes)


# ----------------------------------------------------------------------------- placement


def _two_groups() -> str:
    ar = (
        "{} = bf16[4096,1024]{{1,0}} all-reduce(%p), channel_id={}, replica_groups={}, "
        "use_global_device_ids=true, to_apply=%add"
    )
    return _synthetic(
        f"""
        %add (a: bf16[], b: bf16[]) -> bf16[] {{
          %a = bf16[] parameter(0)
          %b = bf16[] parameter(1)
          ROOT %s = bf16[] add(%a, %b)
        }}

        ENTRY %main (p: bf16[4096,1024]) -> (bf16[4096,1024], bf16[4096,1024]) {{
          %p = bf16[4096,1024]{{1,0}} parameter(0)
          {ar.format("%inner", 1, "[8,8]<=[64]")}
          {ar.format("%outer", 2, "[8,8]<=[8,8]T(1,0)")}
          ROOT %t = (bf16[4096,1024]{{1,0}}, bf16[4096,1024]{{1,0}}) tuple(%inner, %outer)
        }}
        """,
        partitions=64,
    )


def test_group_to_tier_placement():
    prog = program.from_hlo(_two_groups(), {"data": 8, "model": 8})
    inner, outer = [o for o in prog.table.ops if o.kind == "collective"]
    assert (inner.axes, inner.group_size, inner.stride) == (("model",), 8, 1)
    assert (outer.axes, outer.group_size, outer.stride) == (("data",), 8, 8)
    h100, nvl72 = emu.load_system("dgx_h100"), emu.load_system("gb200_nvl72")
    t_h = np.asarray(prog.cost_fn()(h100).op_time_s)
    t_n = np.asarray(prog.cost_fn()(nvl72).op_time_s)
    i, o = prog.table.ops.index(inner), prog.table.ops.index(outer)
    # an 8-GPU node: model groups stay on NVLink, data groups (stride 8) cross InfiniBand
    assert t_h[o] > 4 * t_h[i]
    # one 72-GPU NVLink domain holds both
    assert t_n[o] == pytest.approx(t_n[i], rel=1e-6)
    r = prog.estimate([h100, nvl72])
    tiers = {(c.axes[0], s.system): c.tiers for s in r for c in s.collectives}
    assert tiers[("model", "dgx_h100")] == "nvlinkx8"
    assert tiers[("data", "dgx_h100")] == "scale_outx8"
    assert tiers[("data", "gb200_nvl72")] == "nvlinkx8"


def test_non_uniform_group_uses_its_span():
    mesh = MeshInfo(("a", "b", "c"), (2, 2, 2))
    assert mesh.axes_of([0, 1, 4, 5]) == ("a", "c")
    text = _two_groups().replace("[8,8]<=[64]", "{{0,1,4,5},{2,3,6,7}}", 1)
    text = text.replace("num_partitions=64", "num_partitions=8").replace(
        "[8,8]<=[8,8]T(1,0)", "[4,2]<=[8]"
    )
    prog = build_table(text, MeshInfo(("data", "model"), (4, 2)))
    first = next(o for o in prog.ops if o.kind == "collective")
    assert first.group_size == 4 and first.stride == pytest.approx(6 / 4)


# ----------------------------------------------------------------------------- cost


def test_jit_vmap_match_the_loop(collective_program):
    base = emu.load_system("gb200_nvl72")
    scales = [0.5, 1.0, 2.0]
    systems = [
        dataclasses.replace(
            base,
            tiers=(
                dataclasses.replace(base.tiers[0], bytes_per_s=base.tiers[0].bytes_per_s * m),
                base.tiers[1],
            ),
        )
        for m in scales
    ]
    fn = collective_program.cost_fn(tokens_per_step=1024.0)
    loop = [float(fn(s).step_time_s) for s in systems]
    batch = collective_program.batch_cost(emu.struct.stack(systems), tokens_per_step=1024.0)
    np.testing.assert_allclose(np.asarray(batch.step_time_s), loop, rtol=1e-6)
    assert loop[0] > loop[1] > loop[2] > 0


def test_gradient_finite_and_matches_finite_differences(reference_program):
    prog, _, _ = reference_program
    system = emu.load_system("gb200_nvl72")
    tokens = 4 * 2048.0

    def tpj(s):
        return prog.cost(s, tokens_per_step=tokens).tokens_per_joule

    g = jax.jit(jax.grad(tpj))(system)
    leaves = jax.tree_util.tree_leaves(g)
    assert all(bool(jnp.all(jnp.isfinite(x))) for x in leaves)
    f = jax.jit(tpj)

    def set_bw(s, x):
        tiers = (dataclasses.replace(s.tiers[0], bytes_per_s=x), *s.tiers[1:])
        return dataclasses.replace(s, tiers=tiers)

    def set_peak(s, x):
        peaks = {**s.chip.peak_flops_per_s, "bf16": x}
        return dataclasses.replace(s, chip=dataclasses.replace(s.chip, peak_flops_per_s=peaks))

    h = 0.02
    for grad, x0, setter in (
        (g.tiers[0].bytes_per_s, system.tiers[0].bytes_per_s, set_bw),
        (g.chip.peak_flops_per_s["bf16"], system.chip.peak_flops_per_s["bf16"], set_peak),
    ):
        fd = (
            float(f(setter(system, x0 * math.exp(h)))) - float(f(setter(system, x0 * math.exp(-h))))
        ) / (2 * h)
        ad = float(grad * x0)  # d tokens/J / d log x
        assert ad > 0  # more bandwidth or FLOP/s: more tokens per joule
        assert ad == pytest.approx(fd, rel=0.05)


# ----------------------------------------------------------------------------- reference


def test_reference_program_agrees_with_emu_evaluate(reference_program, tmp_path):
    """FLOPs within 2%, bytes per collective kind within 10%, step time within 15%."""
    from emu.examples import llama
    from emu.program.compare import compare

    prog, tp, dp = reference_program
    cfg = llama.Config(**SMALL, batch=2 * dp)
    path = tmp_path / "reference_llama.toml"  # a model file's name is its stem
    path.write_text(llama.emu_model_toml(cfg))
    model = emu.load_model(path)
    plan = emu.make_plan(
        tp=tp, dp=dp, microbatch=2, global_batch=2 * dp, seq_len=cfg.seq_len, zero=0, grad_bytes=2
    )
    r = compare(prog, emu.load_system("gb200_nvl72"), model, plan)
    assert abs(r["flops"][2]) < 0.02
    for kind in ("all-gather", "reduce-scatter", "all-reduce"):
        got, want, err = r["bytes"][kind]
        assert want > 0 and abs(err) < 0.10, (kind, got, want)
    assert r["bytes"]["all-to-all"][0] == 0 and r["bytes"]["collective-permute"][0] == 0
    assert abs(r["step_time_s"][2]) < 0.15
    # the flash kernels are fused (their scores never reach HBM) and the 16 layers are a loop
    kernels = [o for o in prog.table.ops if o.kind == "kernel" and o.flops > 0]
    assert {o.name for o in kernels} == {"flash_attention", "flash_attention_bwd"}
    assert all(o.count == 16 for o in kernels)


def test_reference_decode_step_on_one_device():
    prog = program.trace_program(
        "emu/examples/llama.py:decode", devices=1, kwargs={"n_layers": 2, "batch": 2}
    )
    kinds = {o.kind for o in prog.table.ops}
    assert {"matmul", "kernel", "memory"} <= kinds and "collective" not in kinds
    (attn,) = [o for o in prog.table.ops if o.kind == "kernel" and o.flops > 0]
    assert attn.name == "decode_attention" and attn.count == 2
    r = prog.estimate(emu.load_system("dgx_h100"), tokens_per_step=2)[0]
    assert r.step_time_s > 0 and r.tokens_per_s == pytest.approx(2 / r.step_time_s, rel=1e-5)


# ----------------------------------------------------------------------------- bad input


def test_function_that_fails_to_trace():
    def bad(x):
        return x @ jnp.ones((3, 3), jnp.float32)

    with pytest.raises(ValueError, match="failed to trace"):
        program.trace(jax.jit(bad), (jax.ShapeDtypeStruct((2, 2), jnp.float32),))


def test_mesh_size_mismatch(builders):
    f = jax.jit(lambda a: a + 1)
    args = (jax.ShapeDtypeStruct((4,), jnp.float32),)
    with pytest.raises(ValueError, match="needs 8 devices but this process has 1"):
        program.trace(f, args, mesh={"data": 8})
    with pytest.raises(ValueError, match="mesh of 4 devices.*--devices is 8"):
        program.trace_program(f"{builders}:small_mesh", devices=8)
    text = _two_groups()
    with pytest.raises(ValueError, match="partitioned 64 ways"):
        program.from_hlo(text, {"data": 8})


def test_one_device_hlo_with_a_larger_mesh_nothing_to_price_and_repeated_keys(tmp_path):
    """A module without num_partitions runs on one device: a mesh of 100,000 used to be
    priced as 100,000 devices (170 MW); a program of zero-size arrays raised a TypeError;
    a repeated --mesh axis kept the last size."""
    a = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    text = jax.jit(lambda x, y: x @ y).lower(a, a).compile().as_text()
    assert "num_partitions" not in text.splitlines()[0]
    one = r"compiled for 1 device \(num_partitions=1, replica_count=1.*has 100000 devices"
    with pytest.raises(ValueError, match=one):
        program.from_hlo(text, {"data": 100000})
    assert program.from_hlo(text, {"data": 1}).table.ops  # the mesh it was compiled for
    empty = jax.ShapeDtypeStruct((0, 0), jnp.float32)
    text0 = jax.jit(lambda x, y: x @ y).lower(empty, empty).compile().as_text()
    with pytest.raises(ValueError, match="nothing emu can price"):
        program.from_hlo(text0, {"data": 1})
    path = tmp_path / "one.hlo"
    path.write_text(text)
    assert main_program(["--hlo", str(path), "--mesh", "data=1,data=2"]) == 2


def test_program_flags_that_would_do_nothing_are_refused(tmp_path, builders, capsys):
    """--mesh with a builder, --devices/--arg with --hlo, --top 0 and a repeated --system
    were accepted and did nothing; an in-process builder had no timeout."""
    a = jax.ShapeDtypeStruct((64, 64), jnp.float32)
    path = tmp_path / "one.hlo"
    path.write_text(jax.jit(lambda x, y: x @ y).lower(a, a).compile().as_text())
    hlo = ["--hlo", str(path), "--mesh", "data=1"]
    cases = [
        ([f"{builders}:small_mesh", "--devices", "1", "--mesh", "x=1"], "--mesh is for --hlo"),
        ([*hlo, "--devices", "4"], "--devices is for a builder"),
        ([*hlo, "--arg", "n=5"], "--arg is for a builder"),
        ([*hlo, "--top", "0"], "--top must be >= 1"),
        ([*hlo, "--system", "dgx_h100", "--system", "DGX-H100"], "given twice"),
    ]
    for argv, needle in cases:
        assert main_program(argv) == 2, argv
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, (argv, err)
    hang = tmp_path / "hang.py"
    hang.write_text("def build():\n    import time\n    time.sleep(120)\n")
    assert jax.device_count() == 1  # so the builder runs in this process
    t0 = time.perf_counter()
    assert main_program([f"{hang}:build", "--devices", "1", "--timeout", "1"]) == 2
    assert time.perf_counter() - t0 < 30
    assert "took over 1 s" in capsys.readouterr().err


def test_missing_builder_and_bad_names(tmp_path, builders):
    with pytest.raises(ValueError, match="does not exist"):
        program.trace_program(str(tmp_path / "nope.py") + ":build", devices=8)
    with pytest.raises(ValueError, match="has no function 'nope'"):
        program.trace_program(f"{builders}:nope", devices=1)
    with pytest.raises(ValueError, match="path/to/file.py:name"):
        program.trace_program("no_colon", devices=2)
    with pytest.raises(ValueError, match="not HLO|not an HLO"):
        program.from_hlo("hello", {"d": 1})
    with pytest.raises(ValueError, match="unknown role"):
        program.from_hlo(_two_groups(), {"data": 8, "model": 8}, axis_roles={"data": "zz"})


def test_cli_one_line_errors_and_json(tmp_path, capsys):
    assert main_program([str(tmp_path / "missing.py") + ":b", "--devices", "8"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("emu: error:") and "does not exist" in err[0]
    path = tmp_path / "m.hlo"
    path.write_text(_two_groups())
    assert main_program(["--hlo", str(path)]) == 2
    assert "--mesh" in capsys.readouterr().err
    bad_set = ["--hlo", str(path), "--mesh", "data=8,model=8", "--set", "plan.tp=2"]
    assert main_program(bad_set) == 2
    assert "only system fields" in capsys.readouterr().err
    argv = ["--hlo", str(path), "--mesh", "data=8,model=8", "--system", "dgx_h100", "--json"]
    assert main_program([*argv, "--tokens-per-step", "4096"]) == 0
    out = json.loads(capsys.readouterr().out)
    (r,) = out["results"]
    keys = {"system", "step_time_s", "flops", "breakdown", "power_w", "collectives", "top_ops"}
    assert keys <= set(r)
    assert {c["kind"] for c in r["collectives"]} == {"all-reduce"}
    assert {"kind", "bytes", "group_size", "count", "time_s"} <= set(r["collectives"][0])
    assert r["tokens_per_s"] == pytest.approx(4096 / r["step_time_s"], rel=1e-5)


def test_emu_program_is_a_subcommand_of_emu(capsys):
    """`emu program` is wired into the main CLI: bad input is one line and exit status 2."""
    from emu.cli import main

    assert main(["program", "emu/examples/llama.py:no_such_builder", "--devices", "8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emu: error:") and "no_such_builder" in err and len(err.splitlines()) == 1


def test_a_device_is_a_rank_on_a_multi_die_chip(collective_program):
    """On a CloudMatrix 384 a JAX device is one 910C die (issue 11: dies as ranks): the
    program costs the same on the system as on its rank view, and a device has half a
    package's FLOP/s (it used to get the whole package's compute and watts)."""
    from emu.topology import rank_system

    cm = emu.load_system("cloudmatrix384")
    fn = collective_program.cost_fn(tokens_per_step=1024.0)
    a, b = fn(cm), fn(rank_system(cm))
    assert float(a.step_time_s) == pytest.approx(float(b.step_time_s), rel=1e-6)
    assert float(a.power_w) == pytest.approx(float(b.power_w), rel=1e-6)
    one_die = emu.struct.replace(cm, chip=emu.struct.replace(cm.chip, dies_per_chip=1.0))
    assert float(fn(one_die).power_w) > 1.5 * float(a.power_w)


def test_a_computation_closed_with_its_execution_thread_ends_there():
    """XLA writes a host computation's end as `}, execution_thread="host"`: it was not read
    as an end, so the next computation's instructions were merged into it."""
    from emu.program.hlo import parse_module

    text = "\n".join([
        "HloModule m",
        "host_fn {",
        "  a = f32[8]{0} parameter(0)",
        "  ROOT n = f32[8]{0} negate(a)",
        '}, execution_thread="host"',
        "",
        "ENTRY main {",
        "  p = f32[8]{0} parameter(0)",
        "  ROOT t = f32[8]{0} tanh(p)",
        "}",
    ])  # fmt: skip
    mod = parse_module(text)
    assert sorted(mod.computations) == ["host_fn", "main"]
    assert [i.name for i in mod.entry.instructions] == ["p", "t"]
    assert [i.name for i in mod.computations["host_fn"].instructions] == ["a", "n"]


def test_in_process_builder_prints_to_stderr_and_json_stays_json(tmp_path, capsys):
    """With --devices 1 the builder runs in this process: its print reached stdout ahead of
    the JSON, which then did not parse."""
    path = tmp_path / "chatty.py"
    path.write_text(
        "import jax, jax.numpy as jnp\n"
        "print('hello at import')\n"
        "def build():\n"
        "    print('hello from builder')\n"
        "    return jax.jit(lambda x: x * 2), (jax.ShapeDtypeStruct((8,), jnp.float32),)\n"
    )
    assert jax.device_count() == 1  # so the builder runs in this process
    assert main_program([f"{path}:build", "--devices", "1", "--json"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["results"][0]["n_devices"] == 1
    assert "hello at import" in err and "hello from builder" in err


def test_token_rates_are_null_without_tokens_per_step_and_zero_is_refused(tmp_path, capsys):
    """Without --tokens-per-step the JSON said tokens_per_s = tokens_per_joule = 0.0;
    --tokens-per-step 0 was accepted and did the same."""
    path = tmp_path / "m.hlo"
    path.write_text(_two_groups())
    argv = ["--hlo", str(path), "--mesh", "data=8,model=8", "--system", "dgx_h100", "--json"]
    assert main_program(argv) == 0
    (r,) = json.loads(capsys.readouterr().out)["results"]
    assert r["tokens_per_step"] is None and r["tokens_per_s"] is None
    assert r["tokens_per_joule"] is None and r["step_time_s"] > 0
    assert main_program([*argv, "--tokens-per-step", "0"]) == 2
    err = capsys.readouterr().err
    assert "--tokens-per-step must be" in err and "(got 0)" in err and err.count("\n") == 1


def test_uncalibrated_system_is_noted_as_by_emu_run(tmp_path, capsys):
    """A system file with a chip family and link type the calibration does not know: `emu
    run` notes it as uncalibrated, `emu program` said nothing (JSON "notes": [])."""
    path = tmp_path / "m.hlo"
    path.write_text(_two_groups())
    argv = ["--hlo", str(path), "--mesh", "data=8,model=8"]
    systems = ["--system", "examples/tpu_like.toml", "--system", "dgx_h100"]
    assert main_program([*argv, *systems]) == 0
    out = capsys.readouterr().out
    assert "note: tpu_like: uncalibrated: chip family 'tpu', link type 'ici'" in out
    assert "dgx_h100: uncalibrated" not in out
    assert main_program([*argv, *systems, "--json"]) == 0
    tpu, h100 = json.loads(capsys.readouterr().out)["results"]
    assert any(n.startswith("uncalibrated: chip family 'tpu'") for n in tpu["notes"])
    assert not any("uncalibrated" in n for n in h100["notes"])


def test_mesh_whose_axes_cannot_give_the_replica_groups(tmp_path, capsys):
    """Only the device count was checked: a mesh of other axes was accepted and its axes
    labelled the groups (another overlap class, another answer) without a word. A group
    along no axis or product of (sub-)axes, or along part of an axis (a sub-axis, as GSPMD
    makes after a reshape), is noted: GSPMD can make either on a valid mesh."""
    from emu.program._collectives import mesh_fit

    text = _two_groups()  # groups of 8 at stride 1 and at stride 8
    assert program.from_hlo(text, {"data": 8, "model": 8}).table.notes == []
    coarse = program.from_hlo(text, {"data": 64}).table.notes
    assert len(coarse) == 2 and all("cover mesh axis data only in part" in n for n in coarse)
    # {0,1,4,5} on (4, 2) is data's outer half x model: a mapping exists
    assert mesh_fit(MeshInfo(("data", "model"), (4, 2)), [[0, 1, 4, 5]]) == (
        "sub-axes",
        ("data",),
    )
    bad = text.replace("[8,8]<=[64]", "{{0,3},{1,2}}", 1)  # {0,3}: no axis gives it
    (note,) = [
        n for n in program.from_hlo(bad, {"data": 8, "model": 8}).table.notes if "no mesh axis" in n
    ]
    assert "a group of 2 devices {0,3}" in note and "group sizes: 2, 8" in note
    path = tmp_path / "bad.hlo"
    path.write_text(bad)
    assert main_program(["--hlo", str(path), "--mesh", "data=8,model=8"]) == 0
    assert "does not give the replica groups" in capsys.readouterr().out


def test_malformed_hlo_is_one_line_with_where(tmp_path, capsys):
    """A text cut mid-line said 'substring not found', a dimension 'nan' 'invalid literal
    for int()', a module without ENTRY was priced, a group naming device 64 of 64 was
    accepted."""
    text = _two_groups()
    at = text.index("[4096,1024]{1,0} all-reduce") + 5
    line = text[:at].count("\n") + 1
    cases = [
        (text[:at], rf"malformed HLO at line {line} .*cannot read the result type"),
        (
            text.replace("bf16[4096,1024]{1,0} parameter(0)", "bf16[nan,1024]{1,0} parameter(0)"),
            r"malformed HLO at line \d+ .*dimension 'nan'",
        ),
        (text.replace("ENTRY %main", "%main"), "malformed HLO: module 'm' has no ENTRY"),
        ("HloModule m\n\nENTRY %e {\n}\n", r"line 3 \(ENTRY e\): it has no instructions"),
        (
            text.replace("[8,8]<=[64]", "{{0,1,2,3,4,5,6,64}}", 1),
            r"line \d+ \(all-reduce %inner\): its replica_groups name device 64 but the "
            "module runs on 64 devices",
        ),
    ]
    for bad, needle in cases:
        with pytest.raises(ValueError, match=needle):
            program.from_hlo(bad, {"data": 8, "model": 8})
    path = tmp_path / "cut.hlo"
    path.write_text(text[:at])
    assert main_program(["--hlo", str(path), "--mesh", "data=8,model=8"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("emu: error: malformed HLO at line") and err.count("\n") == 1


def test_unknown_axis_role_is_refused_before_tracing(monkeypatch, capsys):
    """--axis-role data=xx was refused only after the builder was traced (seconds)."""
    from emu.program import estimate

    def never(*args, **kwargs):
        raise AssertionError("traced before the roles were checked")

    monkeypatch.setattr(estimate, "trace_builder", never)
    argv = ["emu/examples/llama.py:train", "--devices", "8", "--axis-role", "data=xx"]
    assert main_program(argv) == 2
    err = capsys.readouterr().err
    assert "unknown role 'xx' for mesh axis 'data'" in err and err.count("\n") == 1
    with pytest.raises(ValueError, match="unknown role 'xx'"):
        program.trace_program("emu/examples/llama.py:train", devices=8, axis_roles={"d": "xx"})


def test_parameters_and_outputs_larger_than_hbm_are_flagged():
    """A 4 TiB operand on one device was priced as if it fit (a step time, an MFU)."""
    body = """
        ENTRY %main (p: f32[1048576,1048576]) -> f32[1048576,1048576] {
          %p = f32[1048576,1048576]{1,0} parameter(0)
          ROOT %n = f32[1048576,1048576]{1,0} negate(%p)
        }
        """
    h100 = emu.load_system("dgx_h100")
    (r,) = program.from_hlo(_synthetic(body), {"d": 1}).estimate(h100)
    assert r.io_bytes == 2 * 4.0 * 2**40 and not r.fits_hbm
    assert any(n.startswith("out of memory: the program's parameters") for n in r.notes)
    assert r.to_json()["fits_hbm"] is False
    # a donated buffer (the output aliases the parameter) is counted once
    donated = _synthetic(body).replace(
        "num_partitions=1", "num_partitions=1, input_output_alias={ {}: (0, {}, may-alias) }"
    )
    assert program.from_hlo(donated, {"d": 1}).table.io_bytes == 4.0 * 2**40
    small = body.replace("1048576", "1024")
    (r,) = program.from_hlo(_synthetic(small), {"d": 1}).estimate(h100)
    assert r.fits_hbm and not any("out of memory" in n for n in r.notes)


def test_the_standalone_parser_reads_flags_as_written(capsys):
    """`main_program` took `--dev 8` for `--devices 8` and `--devices 8 --devices 4` as 4,
    where `emu program` through the main parser refuses both."""
    assert main_program(["b.py:f", "--devices", "8", "--devices", "4"]) == 2
    assert "--devices is given twice" in capsys.readouterr().err
    assert main_program(["b.py:f", "--dev", "8"]) == 2
    assert "unrecognized arguments: --dev" in capsys.readouterr().err

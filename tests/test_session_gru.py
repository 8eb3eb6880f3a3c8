"""gru4rec::session_gru_forward/backward against the pure-PyTorch reference and torch.nn.GRU."""
import random
import subprocess
import sys

import pytest
import torch

from conftest import CUDA, needs_extension, rel_err
from gru4rec_ext.nn_gru import SessionGRU
from gru4rec_ext.ops import session_gru as session_gru_module
from gru4rec_ext.ops.session_gru import session_gru
from gru4rec_ext.reference import session_gru_reference

pytestmark = needs_extension()

VARIANTS = ["cudnn", "gru4rec"]
RESETS = ["random", "first", "every", "none"]


def make_reset(mode, T, B, device):
    if mode == "random":
        return torch.rand(T, B, device=device) < 0.3
    if mode == "first":
        r = torch.zeros(T, B, dtype=torch.bool, device=device)
        r[0] = True
        return r
    if mode == "every":
        return torch.ones(T, B, dtype=torch.bool, device=device)
    return torch.zeros(T, B, dtype=torch.bool, device=device)


def make_args(T, B, H, E, ids, device, dtype=torch.float32, reset="random", bias=True, N=None):
    """(input, reset, h0, weight_ih, weight_hh, bias_ih, bias_hh), float tensors requiring grad."""
    g = dict(device=device, dtype=dtype)
    N = N if N is not None else E
    x = torch.randint(0, N, (T, B), device=device) if ids else torch.randn(T, B, E, **g)
    w_ih = torch.randn(3 * H, N if ids else E, **g) / (N if ids else E) ** 0.5
    w_hh = torch.randn(3 * H, H, **g) / H ** 0.5
    b = [torch.randn(3 * H, **g) * 0.5 for _ in range(2)] if bias else [None, None]
    args = [x, make_reset(reset, T, B, device), torch.randn(B, H, **g), w_ih, w_hh] + b
    for a in args:
        if a is not None and a.is_floating_point():
            a.requires_grad_(True)
    return args


def grads(fn, args, variant, seed=1):
    """Outputs and the gradients of a fixed random projection of (output, h_n) w.r.t. all leaves."""
    out, h_n = fn(*args, variant=variant)
    gen = torch.Generator().manual_seed(seed)
    go = torch.randn(out.shape, generator=gen, dtype=torch.float64).to(out)
    gh = torch.randn(h_n.shape, generator=gen, dtype=torch.float64).to(h_n)
    leaves = [a for a in args if a is not None and a.requires_grad]
    return out, h_n, torch.autograd.grad((out * go).sum() + (h_n * gh).sum(), leaves)


def check_against_reference(args, variant, tol=1e-5):
    out, h_n, g = grads(session_gru, args, variant)
    r_out, r_h_n, r_g = grads(session_gru_reference, args, variant)
    assert rel_err(out, r_out) < tol
    assert rel_err(h_n, r_h_n) < tol
    assert torch.equal(h_n, out[-1])
    assert len(g) == len(r_g)
    for a, b in zip(g, r_g):
        assert a.shape == b.shape
        assert rel_err(a, b) < tol


def random_shapes(seed, count):
    """Random (T, B, H, E) with B 1..300, H 1..600, T 1..50, bounded in total work."""
    rng = random.Random(seed)
    shapes = []
    while len(shapes) < count:
        T, B, H, E = rng.randint(1, 50), rng.randint(1, 300), rng.randint(1, 600), rng.randint(1, 300)
        if T * B * H * (H + E) <= 1.5e8:
            shapes.append((T, B, H, E))
    return shapes


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize("case", range(4))
def test_matches_reference_random_shapes(device, variant, ids, case):
    T, B, H, E = random_shapes(seed=100 + case + 10 * ids + 20 * (variant == "cudnn"), count=1)[0]
    args = make_args(T, B, H, E, ids, device, reset=RESETS[case])
    check_against_reference(args, variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 300, 600, 64), (50, 2, 33, 5), (3, 7, 31, 97)])
def test_matches_reference_edge_shapes(device, variant, shape):
    T, B, H, E = shape
    for ids in (False, True):
        check_against_reference(make_args(T, B, H, E, ids, device), variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("missing", ["both", "bias_ih", "bias_hh"])
def test_missing_bias_and_repeated_ids(device, variant, missing):
    for ids, E in ((True, 3), (False, 6)):  # 9 rows over 3 items: repeated ids
        args = make_args(4, 9, 17, E, ids, device)
        if missing in ("both", "bias_ih"):
            args[5] = None
        if missing in ("both", "bias_hh"):
            args[6] = None
        check_against_reference(args, variant)


def test_reset_as_numbers(device):
    args = make_args(5, 8, 12, 6, False, device)
    ref = session_gru(*args)
    for dtype in (torch.int64, torch.float32):
        args2 = list(args)
        args2[1] = args[1].to(dtype)
        out = session_gru(*args2)
        assert torch.equal(out[0], ref[0]) and torch.equal(out[1], ref[1])


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
def test_gradcheck_float64(variant, ids):
    x, reset, h0, w_ih, w_hh, b_ih, b_hh = make_args(3, 4, 5, 3, ids, "cpu", torch.float64)
    reset[1, 0] = True
    reset[0, 2] = True

    def f(*floats):
        if ids:
            return session_gru(x, reset, *floats, variant=variant)
        return session_gru(floats[0], reset, *floats[1:], variant=variant)

    floats = (h0, w_ih, w_hh, b_ih, b_hh) if ids else (x, h0, w_ih, w_hh, b_ih, b_hh)
    assert torch.autograd.gradcheck(f, floats)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("bias", [True, False])
def test_cudnn_variant_equals_nn_gru(device, num_layers, bias):
    T, B, E, H = 7, 11, 13, 37
    ref = torch.nn.GRU(E, H, num_layers=num_layers, bias=bias).to(device)
    gru = SessionGRU(E, H, num_layers=num_layers, variant="cudnn", bias=bias).to(device)
    gru.load_state_dict(ref.state_dict())  # the parameter names and layouts are nn.GRU's
    x = torch.randn(T, B, E, device=device)
    h0 = torch.randn(num_layers, B, H, device=device)
    no_reset = torch.zeros(T, B, dtype=torch.bool, device=device)
    out, h_n = gru(x, no_reset, h0)
    # cuDNN may use TF32 (torch's default for it): the reference must not, at a 1e-5 tolerance.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        r_out, r_h_n = ref(x, h0)
    assert out.shape == r_out.shape and h_n.shape == r_h_n.shape
    assert rel_err(out, r_out) < 1e-5 and rel_err(h_n, r_h_n) < 1e-5
    (out.sum() + h_n.sum()).backward()
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        (r_out.sum() + r_h_n.sum()).backward()
    for (name, p), (r_name, r_p) in zip(gru.named_parameters(), ref.named_parameters()):
        assert name == r_name
        assert rel_err(p.grad, r_p.grad) < 1e-5, name


@pytest.mark.parametrize("variant", VARIANTS)
def test_session_gru_module_equals_stacked_references(device, variant):
    T, B, N, H, L = 6, 10, 40, 24, 3
    gru = SessionGRU(N, H, num_layers=L, variant=variant).to(device)
    with torch.no_grad():
        for p in gru.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # nonzero biases too
    ids = torch.randint(0, N, (T, B), device=device)
    reset = torch.rand(T, B, device=device) < 0.3
    h0 = torch.randn(L, B, H, device=device)
    out, h_n = gru(ids, reset, h0)
    x, last = ids, []
    for k in range(L):
        x, h = session_gru_reference(x, reset, h0[k], *gru.layer_parameters(k), variant=variant)
        last.append(h)
    assert rel_err(out, x) < 1e-5
    assert rel_err(h_n, torch.stack(last)) < 1e-5


def test_session_gru_module_init_and_dropout():
    gru = SessionGRU(50, 20, num_layers=2, dropout=0.5)
    for k in range(2):
        w_ih, w_hh, b_ih, b_hh = gru.layer_parameters(k)
        fan_in = 50 if k == 0 else 20
        for block, fan in [(b, fan_in) for b in w_ih.split(20)] + [(b, 20) for b in w_hh.split(20)]:
            bound = (6.0 / (fan + 20)) ** 0.5
            assert block.abs().max() <= bound and block.abs().max() > 0.8 * bound
        assert not b_ih.any() and not b_hh.any()
    x = torch.randn(3, 4, 50)
    reset = torch.zeros(3, 4, dtype=torch.bool)
    gru.eval()
    assert torch.equal(gru(x, reset)[0], gru(x, reset)[0])
    gru.train()
    assert not torch.equal(gru(x, reset)[0], gru(x, reset)[0])  # dropout between the layers


def test_opcheck():
    for ids in (False, True):
        for variant in (0, 1):
            args = make_args(3, 4, 5, 6, ids, "cpu")
            torch.library.opcheck(torch.ops.gru4rec.session_gru_forward.default, (*args, variant))
            out, h_n, ws = torch.ops.gru4rec.session_gru_forward(*args, variant)
            bw = (torch.randn_like(out), torch.randn_like(h_n), *[
                a.detach() if a is not None else None for a in args], out.detach(), ws.detach(),
                variant)
            torch.library.opcheck(torch.ops.gru4rec.session_gru_backward.default, bw,
                                  test_utils=("test_schema", "test_faketensor"))


def test_torch_compile_fullgraph():
    args = make_args(2, 3, 4, 5, False, "cpu")
    x, reset, h0, w_ih, w_hh, b_ih, b_hh = args

    def step(x, reset, h0, w_ih, w_hh, b_ih, b_hh):
        out, h_n = session_gru(x, reset, h0, w_ih, w_hh, b_ih, b_hh, variant="gru4rec")
        return (out * out).sum() + h_n.sum()

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss = compiled(*args)
    g = torch.autograd.grad(loss, [x, h0, w_ih, w_hh, b_ih, b_hh])
    r_loss = step(*args)
    r_g = torch.autograd.grad(r_loss, [x, h0, w_ih, w_hh, b_ih, b_hh])
    assert rel_err(loss, r_loss) < 1e-6
    for a, b in zip(g, r_g):
        assert rel_err(a, b) < 1e-6


def test_reference_fallback_when_no_kernel(monkeypatch):
    args = make_args(3, 4, 5, 6, False, "cpu")
    monkeypatch.setattr(session_gru_module, "_kernel_for", lambda device_type: False)
    out, h_n = session_gru(*args, variant="gru4rec")
    r_out, r_h_n = session_gru_reference(*args, variant="gru4rec")
    assert torch.equal(out, r_out) and torch.equal(h_n, r_h_n)


def bf16_copy(args):
    return [a.detach().bfloat16().requires_grad_(a.requires_grad) if a is not None and
            a.is_floating_point() else a for a in args]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
def test_bfloat16(device, variant, ids):
    """bf16 kernels (float arithmetic, float32 workspace) against the float64 reference."""
    args = make_args(4, 16, 64, 32, ids, device)
    low = bf16_copy(args)
    out, h_n, g = grads(session_gru, low, variant)
    r_args = [a.detach().double().requires_grad_(a.requires_grad) if a is not None and
              a.is_floating_point() else a for a in low]  # the same (bf16-rounded) values
    r_out, r_h_n, r_g = grads(session_gru_reference, r_args, variant)
    assert out.dtype == torch.bfloat16 and all(a.dtype == torch.bfloat16 for a in g)
    assert rel_err(out, r_out) < 3e-2 and rel_err(h_n, r_h_n) < 3e-2
    for a, b in zip(g, r_g):
        assert rel_err(a, b) < 5e-2


def saturated_gate_args(variant, device="cpu"):
    """float32 (args, grad_output, grad_h_n) whose update gate is saturated: a_z = 8 +- 0.3, so
    z = 0.9997 rounds to 1 in bf16 and (1 - z) survives only in a float32 workspace."""
    T, B, H, E = 3, 8, 16, 8
    args = [a.detach() if a is not None else None for a in make_args(T, B, H, E, False, device)]
    with torch.no_grad():
        args[3][H:2 * H] *= 0.1  # the z rows of weight_ih and weight_hh
        args[4][H:2 * H] *= 0.1
        args[5][H:2 * H] = 8.0   # bias_ih of z
        args[6][H:2 * H] = 0.0
    g = torch.Generator().manual_seed(3)
    go = torch.randn(T, B, H, generator=g).to(device)
    gh = torch.randn(B, H, generator=g).to(device)
    return args, go, gh


def saturated_gate_errors(ops, variant, device="cpu"):
    """bf16 run of `ops` (torch.ops.gru4rec or an emulation) on saturated_gate_args: the relative
    errors of the gradients against the float64 reference on the same (bf16) values, and the
    workspace dtype."""
    args, go, gh = saturated_gate_args(variant, device)
    low = [a.bfloat16() if a is not None and a.is_floating_point() else a for a in args]
    v = 0 if variant == "cudnn" else 1
    out, h_n, ws = ops.session_gru_forward(*low, v)
    g = ops.session_gru_backward(go.bfloat16(), gh.bfloat16(), *low, out, ws, v)
    ref = [a.double().requires_grad_() if a is not None and a.is_floating_point() else a for a in low]
    r_out, r_h_n = session_gru_reference(*ref, variant=variant)
    r_g = torch.autograd.grad((r_out * go.double()).sum() + (r_h_n * gh.double()).sum(),
                              [ref[0], ref[2], ref[3], ref[4], ref[5]])
    z = slice(args[4].shape[1], 2 * args[4].shape[1])
    errors = {"input": rel_err(g[0], r_g[0]), "h0": rel_err(g[1], r_g[1]),
              "weight_ih z rows": rel_err(g[2][z], r_g[2][z]),
              "weight_hh z rows": rel_err(g[3][z], r_g[3][z]),
              "bias_ih z": rel_err(g[4][z], r_g[4][z])}
    return errors, ws.dtype


@pytest.mark.parametrize("variant", VARIANTS)
def test_bfloat16_saturated_gates_keep_their_gradient(device, variant):
    """The gradient of the update gate's pre-activation is dh (..) z (1 - z): a bf16 workspace
    rounds z = 0.9997 to 1 and loses it (rel err 1); the float32 workspace keeps it."""
    errors, ws_dtype = saturated_gate_errors(torch.ops.gru4rec, variant, device)
    assert ws_dtype == torch.float32
    for name, err in errors.items():
        assert err < 3e-2, f"grad of {name}: rel err {err:.2e}"


# ---- bad input: every error names the argument ----

def op_args(device="cpu", ids=False):
    return [a.detach() if a is not None else None
            for a in make_args(2, 3, 4, 5, ids, device)] + [0]


def call_op(args):
    return torch.ops.gru4rec.session_gru_forward(*args)


def with_(args, i, value):
    args = list(args)
    args[i] = value
    return args


BAD_INPUTS = [
    # (argument index, make the bad value from the good one, name in the message)
    (0, lambda a: a.double(), "input"),
    (0, lambda a: a.int(), "input"),
    (2, lambda a: a.double(), "h0"),
    (3, lambda a: a.double(), "weight_ih"),
    (5, lambda a: a.double(), "bias_ih"),
    (1, lambda a: a.float(), "reset"),
    (1, lambda a: a[:, :2], "reset"),
    (1, lambda a: a[:1], "reset"),
    (0, lambda a: a[..., :4], "weight_ih"),
    (2, lambda a: a[:, :3], "h0"),
    (2, lambda a: a[:2], "h0"),
    (4, lambda a: a[:, :3], "weight_hh"),
    (3, lambda a: a[:9], "weight_ih"),
    (5, lambda a: a[:5], "bias_ih"),
    (6, lambda a: a[:5], "bias_hh"),
    (7, lambda a: 2, "variant"),
    (0, lambda a: a[:0], "input"),
]


@pytest.mark.parametrize("index,bad,name", BAD_INPUTS)
def test_bad_input_names_the_argument(index, bad, name):
    args = op_args()
    with pytest.raises(RuntimeError, match=name):
        call_op(with_(args, index, bad(args[index])))


@pytest.mark.parametrize("bad_id", [-1, 5, 1000])
def test_ids_out_of_range(bad_id):
    args = op_args("cpu", ids=True)  # N = 5 items
    ids = args[0].clone()
    ids[1, 2] = bad_id
    with pytest.raises(RuntimeError, match="input item id"):
        call_op(with_(args, 0, ids))


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
def test_ids_out_of_range_cuda_device_assert():
    """On CUDA the ids are checked by the kernels (a device assert, no host sync per step). The
    assert leaves the CUDA context unusable, so it runs in a process of its own."""
    code = (
        "import torch, gru4rec_ext._extension\n"
        "ids = torch.tensor([[0, 1], [1000, 2]], device='cuda')\n"
        "w_ih, w_hh = torch.randn(12, 5, device='cuda'), torch.randn(12, 4, device='cuda')\n"
        "reset = torch.zeros(2, 2, dtype=torch.bool, device='cuda')\n"
        "torch.ops.gru4rec.session_gru_forward(ids, reset, torch.zeros(2, 4, device='cuda'), "
        "w_ih, w_hh, None, None, 0)\n"
        "torch.cuda.synchronize()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "input item id out of range" in proc.stdout + proc.stderr, proc.stderr[-2000:]


@pytest.mark.skipif(not CUDA, reason="no CUDA device")
@pytest.mark.parametrize("variant", VARIANTS)
def test_ids_input_has_no_host_sync(variant):
    """SPEC section 8: no host synchronisation in a training step (the ids were checked with
    aminmax + .item() in every forward and backward)."""
    args = [a.detach() for a in make_args(3, 4, 5, 6, True, "cuda")]
    v = 0 if variant == "cudnn" else 1
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, h_n, ws = torch.ops.gru4rec.session_gru_forward(*args, v)
        torch.ops.gru4rec.session_gru_backward(torch.ones_like(out), torch.ones_like(h_n), *args,
                                               out, ws, v, False, False)
    finally:
        torch.cuda.set_sync_debug_mode(0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float8_e4m3fn])
@pytest.mark.parametrize("where", ["kernel", "fake"])
def test_half_and_float8_rejected(device, dtype, where):
    """Half and float8 are refused naming weight_hh, by the kernels and the fake kernel alike."""
    on = "meta" if where == "fake" else device
    args = [a.to(on, dtype) if isinstance(a, torch.Tensor) and a.is_floating_point() else
            a.to(on) if isinstance(a, torch.Tensor) else a for a in op_args()]
    with pytest.raises((RuntimeError, TypeError), match="weight_hh has dtype"):
        call_op(args)


def test_workspace_dtype_of_bfloat16_model():
    """float32 workspace for a bf16 model, in the kernel and the fake kernel; the backward
    refuses a bf16 workspace naming it."""
    args = [a.bfloat16() if isinstance(a, torch.Tensor) and a.is_floating_point() else a
            for a in op_args()]
    out, h_n, ws = call_op(args)
    assert ws.dtype == torch.float32 and out.dtype == torch.bfloat16
    meta = [a.to("meta") if isinstance(a, torch.Tensor) else a for a in args]
    assert call_op(meta)[2].dtype == torch.float32
    with pytest.raises(RuntimeError, match="workspace has dtype BFloat16"):
        torch.ops.gru4rec.session_gru_backward(out, h_n, *args[:7], out, ws.bfloat16(), 0)


def test_bad_variant_name():
    with pytest.raises(ValueError, match="variant"):
        session_gru(*op_args()[:7], variant="lstm")


def test_different_devices():
    # A meta tensor among CPU ones dispatches to the fake kernel, which checks devices too.
    args = op_args()
    with pytest.raises((RuntimeError, ValueError), match="h0"):
        call_op(with_(args, 2, args[2].to("meta")))
    if CUDA:
        with pytest.raises(RuntimeError, match="h0"):
            call_op(with_(args, 2, args[2].cuda()))


def test_backward_bad_gradient_shape():
    args = op_args()
    out, h_n, ws = call_op(args)
    with pytest.raises(RuntimeError, match="grad_output"):
        torch.ops.gru4rec.session_gru_backward(out[:1], h_n, *args[:7], out, ws, 0)
    with pytest.raises(RuntimeError, match="workspace"):
        torch.ops.gru4rec.session_gru_backward(out, h_n, *args[:7], out, ws[..., :4], 0)


@needs_extension()
@pytest.mark.parametrize("variant", ["cudnn", "gru4rec"])
@pytest.mark.parametrize("T", [1, 4])
def test_backward_skips_unwanted_input_and_h0_grads(device, variant, T):
    """need_grad_input / need_grad_h0 = False: those outputs are empty, the others unchanged."""
    args = [a.detach() if a is not None else None for a in make_args(T, 6, 7, 5, False, device)]
    v = 0 if variant == "cudnn" else 1
    out, h_n, ws = torch.ops.gru4rec.session_gru_forward(*args, v)
    go, gh = torch.randn_like(out), torch.randn_like(h_n)
    full = torch.ops.gru4rec.session_gru_backward(go, gh, *args, out, ws, v)
    part = torch.ops.gru4rec.session_gru_backward(go, gh, *args, out, ws, v, False, False)
    assert part[0].numel() == 0 and part[1].numel() == 0
    for a, b in zip(full[2:], part[2:]):
        assert torch.equal(a, b)


@pytest.mark.parametrize("variant", ["cudnn", "gru4rec"])
def test_autograd_with_input_and_h0_not_requiring_grad(device, variant):
    args = make_args(3, 5, 6, 4, False, device)
    args[0] = args[0].detach()
    args[2] = args[2].detach()
    check_against_reference(args, variant)


# ---- gru4rec::session_gru: the differentiable op (C++ autograd Function) ----

class RecordOps(torch.utils._python_dispatch.TorchDispatchMode):
    """Records (op, args) of every op that reaches the Python dispatch key (below autograd)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append((func, args))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("ids", [False, True], ids=["dense", "ids"])
@pytest.mark.parametrize("bias", [True, False])
def test_opcheck_differentiable_op(ids, bias):
    for variant in (0, 1):
        args = make_args(3, 4, 5, 6, ids, "cpu", bias=bias)
        torch.library.opcheck(torch.ops.gru4rec.session_gru.default, (*args, variant))


@pytest.mark.parametrize("variant", VARIANTS)
def test_double_backward_raises(variant):
    args = make_args(2, 3, 4, 5, False, "cpu", torch.float64)
    out, h_n = session_gru(*args, variant=variant)
    loss = (out * out).sum() + h_n.sum()
    once = torch.autograd.grad(loss, args[4], retain_graph=True)[0]
    # create_graph=True alone is fine (same gradient); differentiating that gradient raises.
    g = torch.autograd.grad(loss, args[4], create_graph=True)[0]
    assert torch.equal(g.detach(), once)
    with pytest.raises(RuntimeError, match="session_gru: double backward .* not supported"):
        g.sum().backward()


@pytest.mark.parametrize("wanted", [("h0",), ("weight_hh",), ("input", "bias_hh"), ()])
def test_needs_input_grad_honoured(wanted):
    """Only the arguments that require grad get one, and the backward op is told to skip the
    input and h0 products when those are not wanted."""
    names = ["input", "reset", "h0", "weight_ih", "weight_hh", "bias_ih", "bias_hh"]
    args = [a.detach() for a in make_args(3, 4, 5, 6, False, "cpu")]
    ref_args = make_args(3, 4, 5, 6, False, "cpu")
    for name, a, r in zip(names, args, ref_args):
        a.requires_grad_(name in wanted)
        if r.is_floating_point():
            r.data.copy_(a)
            r.requires_grad_(name in wanted)
        else:
            r.copy_(a)
    with RecordOps() as rec:
        out, h_n = session_gru(*args, variant="cudnn")
        if wanted:
            (out.sum() + h_n.sum()).backward()
    assert out.requires_grad == bool(wanted)
    backward_calls = [a for f, a in rec.calls if f is torch.ops.gru4rec.session_gru_backward.default]
    assert len(backward_calls) == (1 if wanted else 0)
    if wanted:
        args_seen = backward_calls[0]  # trailing arguments equal to their default (True) are left out
        flags = tuple(args_seen[12:]) + (True, True)[len(args_seen) - 12:]
        assert flags == ("input" in wanted, "h0" in wanted)
        r_out, r_h_n = session_gru_reference(*ref_args, variant="cudnn")
        (r_out.sum() + r_h_n.sum()).backward()
    for name, a, r in zip(names, args, ref_args):
        if name in wanted:
            assert rel_err(a.grad, r.grad) < 1e-5, name
        else:
            assert a.grad is None, name


@pytest.mark.parametrize("variant", VARIANTS)
def test_gradcheck_ids_where_row_and_dense_shapes_coincide(variant):
    """T*B = 3H = N: a row-sparse [T*B, 3H] and a dense [3H, N] weight_ih gradient have one shape."""
    T, B, H = 2, 3, 2
    x, reset, h0, w_ih, w_hh, b_ih, b_hh = make_args(T, B, H, 3, True, "cpu", torch.float64, N=3 * H)
    x[1, :] = x[0, :]  # repeated ids
    assert torch.autograd.gradcheck(
        lambda w: session_gru(x, reset, h0.detach(), w, w_hh.detach(), variant=variant)[0], (w_ih,))


def test_inference_mode_runs_the_forward_op():
    args = [a.detach() if a is not None else None for a in make_args(3, 4, 5, 6, False, "cpu")]
    with torch.inference_mode():
        out, h_n = session_gru(*args, variant="gru4rec")
    r_out, r_h_n, _ = torch.ops.gru4rec.session_gru_forward(*args, 1)
    assert torch.equal(out, r_out) and torch.equal(h_n, r_h_n)


def test_session_gru_module_with_a_parametrized_weight():
    """A parametrized weight (not in _parameters) is still found, and its gradient flows."""
    from torch.nn.utils import parametrize

    class Double(torch.nn.Module):
        def forward(self, w):
            return 2 * w

    gru = SessionGRU(6, 5)
    x, reset = torch.randn(3, 4, 6), torch.rand(3, 4) < 0.3
    plain = session_gru_reference(x, reset, torch.zeros(4, 5), gru.weight_ih_l0,
                                  2 * gru.weight_hh_l0, gru.bias_ih_l0, gru.bias_hh_l0)[0]
    parametrize.register_parametrization(gru, "weight_hh_l0", Double())
    out, _ = gru(x, reset)
    assert rel_err(out, plain) < 1e-5
    out.sum().backward()
    assert gru.parametrizations.weight_hh_l0.original.grad is not None

"""The cheap modes against JAX: Laplacian, HVP, divergence, Taylor / pure derivatives up to order 6,
mixed partials and the biharmonic, and the parameter gradients of a loss on each.

References share nothing with nnderiv's collapsed, directional and Hessian-vector stacks:
``jax.hessian`` (Laplacian, weighted Laplacian, a mixed partial of order 2), ``jax.jvp`` of
``jax.jacrev`` (HVP), ``jax.jacfwd`` (divergence), ``jax.experimental.jet`` (JAX's own Taylor mode:
derivatives along directions up to order 6), nested ``jax.jvp`` along ``e_i, e_i, e_j, e_j`` (the
biharmonic without polarization, and a mixed partial of order 4), and ``jax.grad`` (one ``jax.vjp``
per group of references) for the parameter gradients. The JAX network is built from the
description's ``(W, b, activation)``: the numbers nnderiv's model holds.

Error measure: ``max |nnderiv - reference| / max |reference|`` per array (per order for Taylor).
Everything JAX computes for one network is traced into one ``jax.jit``: XLA's compile time is
most of this module's run time, so the programs are kept few and small.
"""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
from oracles import jax_network, relative_error
from strategies import build_model, random_spec, spec_params

import nnderiv as nd

pytestmark = pytest.mark.crosscheck

#: float64 bars, for results of orders <= 2 and for orders 3-6 (longer chains of Faa di Bruno
#: terms), the same for the gradients of losses on them. Measured: <= 1.3e-14 for orders <= 2,
#: <= 1.5e-13 for orders 3-6, <= 5e-15 for the gradients; a pullback off by 1e-6 fails.
RTOL_LOW_ORDER = 1e-12
RTOL_HIGH_ORDER = 1e-10

K = 6  # highest Taylor order checked
K_GRADIENT = 4  # Taylor order of the gradient checks (XLA compiles the reverse of jet slowly)

#: (d, m, hidden activations): together every smooth activation nnderiv has; the first is a field
#: (m == d) for the divergence
NETWORKS = [
    (3, 3, ("tanh", "softplus", "sin")),
    (2, 1, ("sigmoid", "gelu", "silu")),
    (3, 2, ("cos", "gaussian", "elu")),
    (2, 2, ("identity", "exp", "tanh")),
]
NETWORK_IDS = ["-".join((f"d{d}m{m}", *acts)) for d, m, acts in NETWORKS]
N_POINTS = 4


def rtol(order: int) -> float:
    return RTOL_LOW_ORDER if order <= 2 else RTOL_HIGH_ORDER


def assert_close(actual, expected, bar, what):
    error = relative_error(actual, np.asarray(expected))
    assert error <= bar, f"{what}: relative error {error:.3g} > {bar:.0e}"


@pytest.fixture(scope="module")
def jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)  # float64 arrays stay float64
    return jax


@pytest.fixture(scope="module")
def jet(jax):
    return pytest.importorskip("jax.experimental.jet").jet


class Case:
    """One network, its points and the arguments of every call."""

    def __init__(self, index: int):
        d, m, activations = NETWORKS[index]
        rng = np.random.default_rng(300 + index)
        self.spec = random_spec(rng, [d, 8, 8, 8, m], list(activations))
        self.model, self.d, self.m = build_model(self.spec), d, m
        self.x = rng.uniform(-1, 1, (N_POINTS, d))
        self.v, self.v_points = rng.normal(size=d), rng.normal(size=(N_POINTS, d))
        self.V, self.V_points = rng.normal(size=(2, d)), rng.normal(size=(N_POINTS, 2, d))
        B = rng.normal(size=(d, d))
        self.A = (B + B.T) / 2  # indefinite (almost surely)
        self.A_points = np.stack([(lambda C: (C + C.T) / 2)(rng.normal(size=(d, d))) for _ in range(N_POINTS)])
        self.alpha4 = tuple(int(i) for i in np.resize(np.arange(d), 4))  # order 4, every input
        self.alpha22 = (2,) + (0,) * (d - 2) + (2,)  # d^4 f / dx_0^2 dx_{d-1}^2
        self.alpha2 = (0, d - 1)
        self.rng = rng

    def calls(self):
        """``name -> (nnderiv function, kwargs, order)`` for every reference of :func:`jax_references`."""
        calls = {
            # references differentiated for the gradient checks
            "laplacian": (nd.laplacian, {}, 2),
            "weighted laplacian": (nd.laplacian, {"weights": self.A}, 2),
            "per-point weighted laplacian": (nd.laplacian, {"weights": self.A_points}, 2),
            "mixed partial order 2": (nd.mixed_partial, {"indices": self.alpha2, "strategy": "taylor"}, 2),
            "hvp": (nd.hvp, {"v": self.v}, 2),
            "per-point hvp": (nd.hvp, {"v": self.v_points}, 2),
            "pure derivatives": (nd.pure_derivatives, {"order": K_GRADIENT}, K_GRADIENT),
            "taylor": (nd.taylor, {"directions": self.V, "order": K_GRADIENT}, K_GRADIENT),
            "per-point taylor": (nd.taylor, {"directions": self.V_points, "order": K_GRADIENT}, K_GRADIENT),
            "biharmonic": (nd.biharmonic, {}, 4),
            "mixed partial (2, ..., 2)": (nd.mixed_partial, {"multi_index": self.alpha22, "strategy": "taylor"}, 4),
            # forward only
            f"pure derivatives to order {K}": (nd.pure_derivatives, {"order": K}, K),
            f"taylor to order {K}": (nd.taylor, {"directions": self.V, "order": K}, K),
            f"per-point taylor to order {K}": (nd.taylor, {"directions": self.V_points, "order": K}, K),
            "biharmonic by nested jvp": (nd.biharmonic, {}, 4),
            "mixed partial order 4 by nested jvp": (
                nd.mixed_partial,
                {"indices": self.alpha4, "strategy": "taylor"},
                4,
            ),
        }
        if self.m == self.d:
            calls["divergence"] = (nd.divergence, {}, 1)
        return calls


#: the references differentiated for the gradient checks, in two groups (one reverse sweep each)
GRADIENT_GROUPS = {
    "orders <= 2": (
        "laplacian",
        "weighted laplacian",
        "per-point weighted laplacian",
        "mixed partial order 2",
        "hvp",
        "per-point hvp",
        "divergence",
    ),
    "orders 3-4": ("pure derivatives", "taylor", "per-point taylor", "biharmonic", "mixed partial (2, ..., 2)"),
}


def jax_references(jax, jet, case, cotangents=None):
    """Every JAX reference of ``case.calls()`` and, with ``cotangents`` (``{group: {name: cot}}``),
    for each group of :data:`GRADIENT_GROUPS` ``jax.grad`` of ``sum_name <cot, reference>`` as a
    flat list ``[W0, b0, W1, ...]``; all in one ``jax.jit``."""
    jnp = jax.numpy
    f, _ = jax_network(jax, case.spec)
    x = jnp.asarray(case.x)
    (n, d), m = case.x.shape, case.m
    eye = np.eye(d)
    pairs = [(i, j) for i in range(d) for j in range(i + 1, d)]
    shared = np.concatenate([eye, case.V, [eye[i] + eye[j] for i, j in pairs], [eye[i] - eye[j] for i, j in pairs]])
    directions = np.concatenate([np.broadcast_to(shared, (n, *shared.shape)), case.V_points], axis=1)
    split = np.cumsum([d, 2, len(pairs), len(pairs)])  # axes | V | e_i + e_j | e_i - e_j | V per point

    def per_point(params, y):  # (d,) -> (m,)
        return f(params, y)

    def taylor(params, order):  # along every direction: (N, m, R, order + 1), jet of the whole batch
        R = directions.shape[1]
        X, U = jnp.repeat(x, R, axis=0), jnp.asarray(directions.reshape(n * R, d))
        primal, series = jet(lambda y: f(params, y), (X,), ([U] + [jnp.zeros_like(U)] * (order - 1),))
        return jnp.stack([primal, *series], -1).reshape(n, R, m, order + 1).transpose(0, 2, 1, 3)

    def fourth_partials(T):  # f_iijj (N, m, d, d) from fourth derivatives along e_i, e_i +- e_j:
        pure4 = T[:, :, : split[0], 4]  # d^4_{e_i + e_j} + d^4_{e_i - e_j} = 2 f_iiii + 12 f_iijj + 2 f_jjjj
        F = jnp.zeros((n, m, d, d)).at[:, :, np.arange(d), np.arange(d)].set(pure4)
        for p, (i, j) in enumerate(pairs):
            both = T[:, :, split[1] + p, 4] + T[:, :, split[2] + p, 4]
            F = F.at[:, :, i, j].set((both - 2 * pure4[:, :, i] - 2 * pure4[:, :, j]) / 12)
            F = F.at[:, :, j, i].set(F[:, :, i, j])
        return F

    def second_order(params):
        H = jax.vmap(jax.hessian(per_point, argnums=1), (None, 0))(params, x)  # (N, m, d, d)
        hvp_of = jax.vmap(lambda y, v: jax.jvp(lambda z: jax.jacrev(per_point, 1)(params, z), (y,), (v,))[1])
        out = {
            "laplacian": jnp.trace(H, axis1=2, axis2=3),
            "weighted laplacian": jnp.einsum("ij,nmij->nm", case.A, H),
            "per-point weighted laplacian": jnp.einsum("nij,nmij->nm", case.A_points, H),
            "mixed partial order 2": H[:, :, case.alpha2[0], case.alpha2[1]],
            "hvp": hvp_of(x, jnp.broadcast_to(case.v, x.shape)),
            "per-point hvp": hvp_of(x, case.v_points),
        }
        if m == d:
            J = jax.vmap(jax.jacfwd(per_point, argnums=1), (None, 0))(params, x)
            out["divergence"] = jnp.trace(J, axis1=1, axis2=2)
        return out

    def higher_order(params):
        T = taylor(params, K_GRADIENT)
        F = fourth_partials(T)
        return {
            "pure derivatives": T[:, :, : split[0]],
            "taylor": T[:, :, split[0] : split[1]],
            "per-point taylor": T[:, :, split[3] :],
            "biharmonic": F.sum(axis=(2, 3)),
            "mixed partial (2, ..., 2)": F[:, :, 0, d - 1],
        }

    def nested_jvp(params, y, U):  # D^k f(y)[u_1, ..., u_k] for U (k, d)
        g = partial(per_point, params)
        for u in U:
            g = partial(lambda h, u, z: jax.jvp(h, (z,), (u,))[1], g, u)
        return g(y)

    def forward_only(params):
        T = taylor(params, K)
        # (e_i, e_i, e_j, e_j) for every (i, j), then the directions of alpha4: no polarization
        quads = np.array(
            [[eye[i], eye[i], eye[j], eye[j]] for i in range(d) for j in range(d)] + [eye[list(case.alpha4)]]
        )
        fourth = jax.vmap(jax.vmap(partial(nested_jvp, params), (None, 0)), (0, None))(x, quads)  # (N, Q, m)
        return {
            f"pure derivatives to order {K}": T[:, :, : split[0]],
            f"taylor to order {K}": T[:, :, split[0] : split[1]],
            f"per-point taylor to order {K}": T[:, :, split[3] :],
            "biharmonic by nested jvp": fourth[:, :-1].sum(axis=1),
            "mixed partial order 4 by nested jvp": fourth[:, -1],
        }

    def references(params):
        out, grads = forward_only(params), {}
        for group, fn in (("orders <= 2", second_order), ("orders 3-4", higher_order)):
            group_out, vjp = jax.vjp(fn, params)
            out.update(group_out)
            if cotangents is not None:
                (pairs_bar,) = vjp({name: cotangents[group][name] for name in group_out})
                grads[group] = [g for pair in pairs_bar for g in pair]
        return out, grads

    return jax.jit(references)([(jnp.asarray(W), jnp.asarray(b)) for W, b, _ in case.spec])


GRADIENT_NETWORKS = (0, 2)  # XLA compiles the reverse sweeps for seconds: two networks suffice
_COMPUTED: dict = {}


def computed(jax, jet, index: int) -> Case:
    """The case ``index`` with its JAX references (and gradients), computed once per session.

    Gradient checks: per group of :data:`GRADIENT_GROUPS`, the loss ``sum_name w_name <cot_name,
    reference_name>`` with random cotangents, weighted so that each term's gradient has max-norm 1
    (by nnderiv's pullback; a term nnderiv gets wrong still shows at O(1)): one reverse sweep per
    group, yet no term is drowned by a larger one."""
    if index not in _COMPUTED:
        case = Case(index)
        calls = case.calls()
        case.expected_grads = {}
        cotangents = None
        if index in GRADIENT_NETWORKS:
            cotangents = {}
            for group, names in GRADIENT_GROUPS.items():
                total, cotangents[group] = None, {}
                for name in (name for name in names if name in calls):
                    fn, kwargs, _ = calls[name]
                    out, pullback = nd.vjp(fn, case.model, case.x, **kwargs)
                    cot = case.rng.normal(size=out.shape)
                    grads = pullback(cot)
                    size = max(np.abs(g).max() for g in grads.values())
                    cotangents[group][name] = cot / size if size > 0 else cot
                    grads = pullback(cotangents[group][name])
                    total = grads if total is None else {k: total[k] + g for k, g in grads.items()}
                case.expected_grads[group] = total  # nnderiv's, compared with JAX's below
        out, grads = jax_references(jax, jet, case, cotangents)
        case.expected = {k: np.asarray(v) for k, v in out.items()}
        case.jax_grads = {group: [np.asarray(a) for a in v] for group, v in grads.items()}
        _COMPUTED[index] = case
    return _COMPUTED[index]


@pytest.mark.parametrize("index", range(len(NETWORKS)), ids=NETWORK_IDS)
def test_every_mode_matches_jax(jax, jet, index):
    """Laplacian (plain, weighted, per-point weights), HVP (shared and per-point v), divergence,
    mixed partials (both strategies), biharmonic; Taylor and pure derivatives order by order."""
    case = computed(jax, jet, index)
    for name, (fn, kwargs, order) in case.calls().items():
        got, expected = fn(case.model, case.x, **kwargs), case.expected[name]
        if "taylor" in name or "pure" in name:
            for k in range(order + 1):
                assert_close(got[..., k], expected[..., k], rtol(k), f"{name}, order {k}")
        else:
            assert_close(got, expected, rtol(order), name)
        if fn is nd.mixed_partial:
            got = nd.mixed_partial(case.model, case.x, **{**kwargs, "strategy": "full"})
            assert_close(got, expected, rtol(order), f"{name} (full)")


@pytest.mark.parametrize("group", list(GRADIENT_GROUPS))
@pytest.mark.parametrize("index", GRADIENT_NETWORKS, ids=[NETWORK_IDS[i] for i in GRADIENT_NETWORKS])
def test_parameter_gradients_match_jax(jax, jet, index, group):
    """``vjp``'s pullbacks of random cotangents == ``jax.grad`` of ``<cot, JAX reference>``, summed
    over the references of ``group`` (see :func:`computed`)."""
    case = computed(jax, jet, index)
    names = [name for name in GRADIENT_GROUPS[group] if name in case.calls()]
    order = max(case.calls()[name][2] for name in names)
    nnderiv_grads = case.expected_grads[group]
    for param, expected in zip(spec_params(case.spec), case.jax_grads[group]):
        assert_close(nnderiv_grads[param], expected, rtol(order), f"gradient of the loss on {names} wrt {param}")


def test_laplacian_matches_folx(jax):
    """folx's forward Laplacian (the same collapsed idea, written for JAX), when installed."""
    folx = pytest.importorskip("folx")
    case = Case(1)
    f, _ = jax_network(jax, case.spec)
    params = [(jax.numpy.asarray(W), jax.numpy.asarray(b)) for W, b, _ in case.spec]
    laplacian = folx.forward_laplacian(partial(f, params))
    expected = np.stack([np.asarray(laplacian(jax.numpy.asarray(y)).laplacian) for y in case.x])
    assert_close(nd.laplacian(case.model, case.x), expected, RTOL_LOW_ORDER, "laplacian vs folx")

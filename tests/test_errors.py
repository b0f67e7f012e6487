"""Every bad input raises a clear nnderiv error; nothing is silently broadcast or cast."""

import numpy as np
import pytest

import nnderiv as nd


@pytest.fixture
def model():
    return nd.MLP([2, 4, 1], activation="tanh", seed=0)


@pytest.mark.parametrize(
    ("x", "error", "words"),
    [
        (np.zeros(2), nd.ShapeError, "shape (N, 2)"),
        (np.zeros((3, 3)), nd.ShapeError, "got shape (3, 3)"),
        (np.zeros((3, 2, 1)), nd.ShapeError, "(N, 2)"),
        (np.array([[0.0, np.nan]]), nd.NonFiniteError, "NaN or Inf"),
        (np.array([[np.inf, 0.0]]), nd.NonFiniteError, "index (0, 0)"),
        (np.zeros((3, 2), dtype=complex), nd.DTypeError, "complex"),
        (np.array([["a", "b"]]), nd.DTypeError, "real floating"),
        (np.zeros((3, 2), dtype=bool), nd.DTypeError, "bool"),
    ],
)
@pytest.mark.parametrize("fn", [nd.value, nd.jacobian, nd.hessian])
def test_bad_points(model, fn, x, error, words):
    with pytest.raises(error, match=None) as info:
        fn(model, x)
    assert words in str(info.value)
    assert isinstance(info.value, nd.NnderivError)


def test_one_input_hint():
    model = nd.MLP([1, 3, 1], seed=0)
    with pytest.raises(nd.ShapeError, match=r"reshape\(-1, 1\)"):
        model(np.zeros(5))


@pytest.mark.parametrize("order", [-1, nd.MAX_ORDER + 1, 1.5, "2", True, None])
def test_bad_orders(model, order):
    with pytest.raises(nd.OrderError) as info:
        nd.derivatives(model, np.zeros((1, 2)), order=order)
    assert isinstance(info.value, ValueError)


def test_order_not_computed(model):
    D = nd.derivatives(model, np.zeros((1, 2)), order=1)
    with pytest.raises(nd.OrderError, match="order=2"):
        D.hessian
    with pytest.raises(nd.ShapeError):
        D.partial((0, 2))
    with pytest.raises(nd.ShapeError):
        D.partial(multi_index=(1,))


def test_unknown_activation_lists_known_ones():
    with pytest.raises(nd.UnknownActivationError, match="tanh") as info:
        nd.MLP([2, 3, 1], activation="tanhh")
    assert "tanhh" in str(info.value)


@pytest.mark.parametrize("dtype", ["float16", "int32", "complex128", "banana"])
def test_bad_dtypes(dtype):
    with pytest.raises(nd.DTypeError, match="float32"):
        nd.Dense(2, 3, dtype=dtype)


def test_mismatched_widths_and_dtypes():
    with pytest.raises(nd.ArchitectureError, match="expects 4"):
        nd.Sequential(nd.Dense(2, 3), nd.Tanh(), nd.Dense(4, 1))
    with pytest.raises(nd.ArchitectureError, match="one dtype"):
        nd.Sequential(nd.Dense(2, 3, dtype="float32"), nd.Dense(3, 1))
    with pytest.raises(nd.ArchitectureError):
        nd.Sequential(nd.Tanh())
    with pytest.raises(nd.ArchitectureError):
        nd.MLP([3])
    with pytest.raises(nd.ShapeError):
        nd.MLP([3, 0, 1])


def test_set_params_checks_names_and_shapes(model):
    with pytest.raises(nd.ArchitectureError, match="unknown parameter"):
        model.set_params({"9.W": np.zeros((2, 4))})
    with pytest.raises(nd.ShapeError, match="shape"):
        model.set_params({"0.W": np.zeros((4, 2))})


def test_vjp_errors(model):
    x = np.zeros((3, 2))
    with pytest.raises(nd.NnderivError, match="no pullback rule"):
        nd.vjp(np.sin, model, x)
    with pytest.raises(nd.NnderivError, match="wrt"):
        nd.vjp(nd.jacobian, model, x, wrt="weights")
    out, pullback = nd.vjp(nd.jacobian, model, x)
    with pytest.raises(nd.ShapeError, match=r"\(3, 1, 2\)"):
        pullback(np.ones((3, 2)))  # nothing silently broadcast
    with pytest.raises(nd.NonFiniteError):
        pullback(np.full(out.shape, np.nan))
    _, pullback = nd.vjp(nd.derivatives, model, x, order=1)
    with pytest.raises(nd.OrderError, match="only orders <= 1"):
        pullback({2: np.zeros((3, 1, 2, 2))})
    with pytest.raises(nd.NnderivError, match="dict"):
        pullback([np.zeros((3, 1))])


def test_errors_are_builtin_subclasses():
    assert issubclass(nd.ShapeError, ValueError) and issubclass(nd.DTypeError, TypeError)
    assert issubclass(nd.MemoryLimitError, MemoryError) and issubclass(nd.FileFormatError, ValueError)

"""Every error ``Graph`` raises, with the argument and value the message names."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor
from torch.distributions import Bernoulli, Categorical, Normal

import gradest
from gradest import Enumerate, Graph, LeaveOneOut, Pathwise, ScoreFunction
from tests.graph.common import DTYPE, leaves

TABLE = torch.tensor([0.5, -1.0, 2.0], dtype=DTYPE)


def _logits(*batch: int) -> Tensor:
    (p,) = leaves(torch.zeros(*batch, 3))
    return p


# ---- construction and sample() -------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0, -3])
def test_enumerate_budget_must_be_positive(budget: int) -> None:
    with pytest.raises(ValueError, match=f"enumerate_budget={budget} must be >= 1"):
        Graph(enumerate_budget=budget)


@pytest.mark.parametrize("budget", [True, 2.5, "8"])
def test_enumerate_budget_must_be_an_int(budget) -> None:
    with pytest.raises(TypeError, match="enumerate_budget=.* must be an int"):
        Graph(enumerate_budget=budget)


def test_node_name_used_twice() -> None:
    with Graph() as g:
        g.sample("z", Categorical(logits=_logits()))
        with pytest.raises(ValueError, match="name='z' is already a node or an observation of this graph"):
            g.sample("z", Normal(0.0, 1.0))


def test_same_name_in_two_graphs_is_fine() -> None:
    with Graph() as g, Graph() as h:
        g.sample("z", Categorical(logits=_logits()))
        h.sample("z", Categorical(logits=_logits()))


def test_node_name_must_be_a_str() -> None:
    with Graph() as g, pytest.raises(TypeError, match="name=3 must be a str"):
        g.sample(3, Normal(0.0, 1.0))


def test_dist_must_be_a_distribution() -> None:
    with Graph() as g, pytest.raises(TypeError, match="dist=str is not a torch.distributions.Distribution"):
        g.sample("x", "normal")


def test_estimator_must_be_an_estimator() -> None:
    with Graph() as g, pytest.raises(TypeError, match="estimator='pathwise' is not a gradest Estimator"):
        g.sample("x", Normal(0.0, 1.0), "pathwise")


@pytest.mark.parametrize(("n", "error"), [(0, ValueError), (2.0, TypeError)])
def test_n_must_be_a_positive_int(n, error) -> None:
    with Graph() as g, pytest.raises(error, match=f"Graph.sample: n={n}"):
        g.sample("x", Normal(0.0, 1.0), n=n)


def test_estimator_check_runs_for_each_node() -> None:
    with Graph() as g:
        with pytest.raises(NotImplementedError, match="Pathwise: dist=Bernoulli"):
            g.sample("b", Bernoulli(logits=torch.zeros(())), Pathwise())
        with pytest.raises(ValueError, match="LeaveOneOut: n=1"):
            g.sample("c", Categorical(logits=_logits()), ScoreFunction(LeaveOneOut()), n=1)


def test_child_built_from_samples_reduced_over_their_sample_dim() -> None:
    with Graph() as g:
        z = g.sample("z", Categorical(logits=_logits()), n=4)
        with pytest.raises(ValueError, match=r"node 'y' depends on nodes whose samples occupy 1 leading dims.*"
                                             r"batch_shape \(\)"):
            g.sample("y", Normal(TABLE[z].mean(0), 1.0))


def test_child_whose_sample_dim_has_the_wrong_size() -> None:
    with Graph() as g:
        z = g.sample("z", Categorical(logits=_logits(2)), n=4)  # [4, 2]
        with pytest.raises(ValueError, match=r"node 'y' has batch_shape \(3, 2\); its dim 0 has size 3.*4 samples"):
            g.sample("y", Normal(TABLE[z][:3], 1.0))


# ---- cost() --------------------------------------------------------------------------------------------


def test_cost_must_be_a_tensor() -> None:
    with Graph() as g:
        g.sample("z", Categorical(logits=_logits()), n=4)
        with pytest.raises(TypeError, match="cost 'cost0' is a float, not a tensor"):
            g.cost(1.0)


def test_cost_name_must_be_a_str_and_swapped_arguments_are_named() -> None:
    with Graph() as g:
        z = g.sample("z", Categorical(logits=_logits()), n=4)
        swapped = (r"Graph.cost: name=tensor\(shape=\(4,\), dtype=torch.float64\) must be a str \(the arguments "
                   r"look swapped\); the cost comes first: g.cost\(value, name\)")
        with pytest.raises(TypeError, match=swapped):
            g.cost("recon", TABLE[z])
        with pytest.raises(TypeError, match=r"Graph.cost: name=3 must be a str; the cost comes first"):
            g.cost(TABLE[z], 3)


def test_integer_cost() -> None:
    with Graph() as g:
        z = g.sample("z", Categorical(logits=_logits()), n=4)
        with pytest.raises(TypeError, match=r"cost .steps. has dtype=torch.int64; costs must be floating point"):
            g.cost(z * 2, name="steps")


def test_nan_cost_while_validating() -> None:
    before = gradest.is_validation_enabled()
    try:
        gradest.set_validation(True)
        with Graph() as g:
            z = g.sample("z", Categorical(logits=_logits()), n=4)
            with pytest.raises(ValueError, match=r"cost 'cost0' contains NaN \(4 of 4 elements\)"):
                g.cost(TABLE[z] * float("nan"))
        gradest.set_validation(False)
        with Graph() as g:  # not checked when validation is off
            z = g.sample("z", Categorical(logits=_logits()), n=4)
            g.cost(TABLE[z] * float("nan"))
        assert g.loss().isnan()
    finally:
        gradest.set_validation(before)


def test_cost_reduced_over_a_sample_dim() -> None:
    with Graph() as g:
        z = g.sample("z", Categorical(logits=_logits(2)), n=4)  # [4, 2]
        with pytest.raises(ValueError, match=r"cost 'cost0' has shape \(2,\): dim 0 has size 2, which does not line "
                                             r"up with sample position 1 \(nodes \['z'\], 4 samples\)"):
            g.cost(TABLE[z].mean(0))
        with pytest.raises(ValueError, match=r"cost 'cost1' has shape \(\) but depends on nodes \['z'\] whose "
                                             r"samples occupy 1 leading dims"):
            g.cost(TABLE[z].mean(), name="cost1")
        with pytest.raises(ValueError, match=r"shape \(1, 2\): dim 0 has size 1 but it depends on node\(s\) \['z'\] "
                                             r"with 4 samples there"):
            g.cost(TABLE[z].mean(0, keepdim=True))


def test_cost_whose_sample_dim_has_the_wrong_size() -> None:
    with Graph() as g:
        z = g.sample("z", Categorical(logits=_logits(2)), n=4)
        with pytest.raises(ValueError, match=r"shape \(3, 2\): dim 0 has size 3, which does not line up"):
            g.cost(TABLE[z][:3])


def test_cost_reduced_over_a_parent_sample_dim() -> None:
    """z (n=3) → y (n=2): a cost [2] that averaged z's plate away does not line up."""
    with Graph() as g:
        z = g.sample("z", Categorical(logits=_logits()), n=3)
        y = g.sample("y", Normal(TABLE[z], 1.0), n=2)  # [2, 3]
        with pytest.raises(ValueError, match=r"cost 'cost0' has shape \(2,\) but depends on nodes \['z', 'y'\]"):
            g.cost(y.mean(1))


def test_cost_batch_dims_must_match_the_nodes() -> None:
    with Graph() as g:
        z = g.sample("z", Categorical(logits=_logits(3)), n=4)  # [4, 3]
        with pytest.raises(ValueError, match=r"batch shape \(1,\) but depends on node 'z' with batch shape \(3,\): "
                                             r"batch dim 0 has size 1, not 3"):
            g.cost(TABLE[z].sum(-1, keepdim=True))  # would count the sum once per element of z
        with pytest.raises(ValueError, match=r"batch shape \(2,\) .* batch dim 0 has size 2, not 3"):
            g.cost(TABLE[z][:, :2])
        g.cost(TABLE[z].sum(-1))  # reduced away entirely: credited to all of z's elements


def test_enumerate_budget_is_over_the_joint_support() -> None:
    with Graph(enumerate_budget=8) as g:
        a = g.sample("a", Categorical(logits=torch.zeros(4)), Enumerate())
        b = g.sample("b", Categorical(logits=_logits()), Enumerate())
        g.cost(a.to(DTYPE))  # a: 4 points, b: 3 points; each alone fits
        g.cost(TABLE[b])
        with pytest.raises(ValueError, match=r"cost 'joint' spans a joint enumerated support of 12 points, over "
                                             r"enumerate_budget=8"):
            g.cost((TABLE[b] * a).to(DTYPE), name="joint")


def test_cost_with_fewer_batch_dims_than_an_enumerated_node() -> None:
    with Graph() as g:
        b = g.sample("b", Bernoulli(logits=torch.zeros(3, requires_grad=True)), Enumerate())  # [2, 3]
        with pytest.raises(ValueError, match=r"Graph.cost: cost 'cost0' has batch shape \(\) but depends on node "
                                             r"'b' \(batch shape \(3,\)\), whose Enumerate varies all batch"):
            g.cost(b.sum(-1))


def test_cost_reducing_the_batch_of_a_measure_valued_node() -> None:
    from gradest import MeasureValued

    with Graph() as g:
        x = g.sample("x", Normal(torch.zeros(3, requires_grad=True), 1.0), MeasureValued())
        with pytest.raises(ValueError, match=r"node 'x' \(batch shape \(3,\)\), whose MeasureValued varies"):
            g.cost(x.sum(-1))


def test_loss_without_costs() -> None:
    with Graph() as g:
        g.sample("z", Categorical(logits=_logits()), n=4)
    with pytest.raises(ValueError, match="Graph.loss: no costs were added"):
        g.loss()


# ---- closed graphs and other graphs --------------------------------------------------------------------


def test_samples_and_costs_of_a_closed_graph_are_plain_tensors() -> None:
    """Logging after ``backward()`` is what every training loop does: once the graph has closed, its
    samples and anything computed from them are ordinary tensors (and print as such)."""
    logits = _logits()
    with Graph() as g:
        z = g.sample("z", Categorical(logits=logits), n=4)
        x = g.sample("x", Normal(torch.zeros((), requires_grad=True), 1.0), n=4)
        rec = TABLE[z] + x
        g.cost(rec)
    loss = g.loss()
    loss.backward()
    assert repr(rec).startswith("tensor(") and "Provenance" not in repr(z)
    assert isinstance(rec.mean().item(), float) and isinstance(float(rec.detach().sum()), float)
    assert type(rec.detach()) is Tensor and len(rec.tolist()) == 4 and type(z + 1) is Tensor
    assert type(rec) is Tensor and type(z) is Tensor  # re-classed on first use
    assert isinstance(loss.item(), float) and type(loss) is Tensor
    assert logits.grad is not None


def test_sample_and_cost_after_close() -> None:
    with Graph() as g:
        x = g.sample("x", Normal(torch.zeros(()), 1.0), n=2)
        g.cost(x**2)
    with pytest.raises(RuntimeError, match=r"Graph.sample: the graph is closed"):
        g.sample("y", Normal(0.0, 1.0))
    with pytest.raises(RuntimeError, match=r"Graph.cost: the graph is closed"):
        g.cost(torch.ones(2))
    assert type(x**2) is Tensor  # its sample is plain data now
    with pytest.raises(RuntimeError, match="this graph was already closed"), g:
        pass


def test_exception_inside_the_block_closes_the_graph() -> None:
    with pytest.raises(KeyError), Graph() as g:
        g.sample("z", Categorical(logits=_logits()), n=2)
        raise KeyError("boom")
    with pytest.raises(RuntimeError, match="Graph.sample: the graph is closed"):
        g.sample("y", Normal(0.0, 1.0))


def test_cost_using_samples_of_another_graph() -> None:
    with Graph() as g, Graph() as h:
        z = g.sample("z", Categorical(logits=_logits()), n=4)
        x = g.sample("x", Normal(torch.zeros((), requires_grad=True), 1.0), n=4)
        with pytest.raises(RuntimeError, match="Graph.cost: depends on node 'z' of another graph;"):
            h.cost(TABLE[z])
        with pytest.raises(RuntimeError, match="Graph.cost: depends on node 'x' of another graph;"):
            h.cost(x**2)
        with pytest.raises(RuntimeError, match="Graph.sample: depends on node 'x' of another graph;"):
            h.sample("y", Normal(x, 1.0))
    with Graph() as k:  # a closed graph's sample is data in a new graph: a cost with no node, pathwise in x
        k.cost(x**2)
    assert not k.costs[0].deps
    k.loss().backward()



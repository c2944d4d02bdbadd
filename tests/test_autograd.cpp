// The autograd engine: seeding, accumulation, retain_graph, no_grad, detach, the version
// counter on saved tensors, tensor hooks, post-accumulate-grad hooks, shared inputs, views in
// the graph, and the order the engine runs nodes in.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include "core/autograd.h"
#include "core/ops.h"
#include "core/tensor.h"
#include "tests/expect_error.h"
#include "tests/gradcheck.h"

namespace kiln {
namespace {

using testing::expect_error;

using Values = std::vector<double>;
using testing::rand_input;

Tensor leaf(const Values& v, const Shape& shape) {
  return from_vector(v, shape, {.dtype = DType::f64, .requires_grad = true});
}

Values grad_of(const Tensor& t) {
  EXPECT_TRUE(t.grad().defined()) << "no gradient for " << t.meta_str();
  return t.grad().defined() ? t.grad().to_vector<double>() : Values{};
}

// ---------------------------------------------------------------- basics

TEST(Autograd, BackwardOfAScalarSeedsWithOne) {
  Tensor x = leaf({1, 2, 3}, {3});
  EXPECT_TRUE(x.is_leaf());
  EXPECT_EQ(x.grad_fn(), nullptr);
  Tensor y = sum(x * x);
  EXPECT_EQ(y.dim(), 0);
  EXPECT_TRUE(y.requires_grad());
  EXPECT_FALSE(y.is_leaf());
  ASSERT_NE(y.grad_fn(), nullptr);
  EXPECT_FALSE(x.grad().defined());  // nothing before backward
  y.backward();
  EXPECT_EQ(grad_of(x), (Values{2, 4, 6}));
  EXPECT_EQ(x.grad().dtype(), DType::f64);
  EXPECT_FALSE(x.grad().requires_grad());
  // Non-leaf tensors do not keep a .grad.
  EXPECT_FALSE(y.grad().defined());
}

TEST(Autograd, NonScalarBackwardNeedsAGradient) {
  Tensor x = leaf({1, 2, 3}, {3});
  Tensor y = x * 2.0;
  expect_error([&] { y.backward(); }, "scalar");
  y.backward(from_vector(Values{1, 10, 100}, {3}, {.dtype = DType::f64}));
  EXPECT_EQ(grad_of(x), (Values{2, 20, 200}));
  expect_error([&] { (x * 3.0).backward(ones({2}, {.dtype = DType::f64})); }, "does not match");
}

TEST(Autograd, ErrorsOnTensorsOutsideTheGraph) {
  Tensor c = ones({2}, {.dtype = DType::f64});
  expect_error([&] { sum(c).backward(); }, "does not require grad");
  Tensor x = leaf({1, 2}, {2});
  Tensor y = x * 2.0;
  expect_error([&] { y.requires_grad_(false); }, "leaf");
  expect_error([&] { ones({2}, {.dtype = DType::i64}).requires_grad_(); }, "floating");
  expect_error([&] { c.register_hook([](const Tensor&) { return Tensor(); }); },
               "does not require grad");
  expect_error([&] { y.register_post_accumulate_grad_hook([](Tensor&) {}); }, "leaf");
}

TEST(Autograd, GradientsAccumulateAcrossBackwardCalls) {
  Tensor x = leaf({1, -2}, {2});
  sum(x * x).backward();
  EXPECT_EQ(grad_of(x), (Values{2, -4}));
  sum(x * 3.0).backward();  // a second graph over the same leaf
  EXPECT_EQ(grad_of(x), (Values{5, -1}));
  // Zeroing (as an optimizer does) starts over.
  x.mutable_grad().zero_();
  sum(x).backward();
  EXPECT_EQ(grad_of(x), (Values{1, 1}));
  x.set_grad(Tensor());
  sum(x * 4.0).backward();
  EXPECT_EQ(grad_of(x), (Values{4, 4}));
}

TEST(Autograd, FirstGradientIsAFreshBuffer) {
  // The stored .grad must not alias a tensor the graph hands along: later accumulation
  // would otherwise write into it.
  Tensor x = leaf({1, 2}, {2});
  Tensor seed = from_vector(Values{1, 1}, {2}, {.dtype = DType::f64});
  Tensor y = x * 1.0;
  y.backward(seed);
  sum(x * 1.0).backward();
  EXPECT_EQ(seed.to_vector<double>(), (Values{1, 1}));
  EXPECT_EQ(grad_of(x), (Values{2, 2}));
}

TEST(Autograd, RetainGraph) {
  {
    Tensor x = leaf({0.5, 1.5}, {2});
    Tensor y = sum(exp(x) * x);
    y.backward();
    expect_error([&] { y.backward(); }, "second time");
  }
  {
    Tensor x = leaf({0.5, 1.5}, {2});
    Tensor y = sum(exp(x) * x);
    y.backward(Tensor(), /*retain_graph=*/true);
    const Values once = grad_of(x);
    y.backward();
    const Values twice = grad_of(x);
    ASSERT_EQ(twice.size(), once.size());
    for (size_t i = 0; i < once.size(); ++i) EXPECT_DOUBLE_EQ(twice[i], 2 * once[i]);
    // d/dx (x e^x) = (1 + x) e^x
    EXPECT_NEAR(once[0], 1.5 * std::exp(0.5), 1e-12);
    EXPECT_NEAR(once[1], 2.5 * std::exp(1.5), 1e-12);
  }
}

TEST(Autograd, NoGradRecordsNothing) {
  Tensor x = leaf({1, 2}, {2});
  EXPECT_TRUE(GradMode::is_enabled());
  Tensor y;
  {
    NoGradGuard guard;
    EXPECT_FALSE(GradMode::is_enabled());
    y = exp(x * x) + x;
    {
      NoGradGuard nested;
      EXPECT_FALSE(GradMode::is_enabled());
    }
    EXPECT_FALSE(GradMode::is_enabled());  // the inner guard restores "off"
    Tensor v = x.view({2, 1}).t();
    EXPECT_FALSE(v.requires_grad());
  }
  EXPECT_TRUE(GradMode::is_enabled());
  EXPECT_FALSE(y.requires_grad());
  EXPECT_EQ(y.grad_fn(), nullptr);
  EXPECT_TRUE(y.is_leaf());
  EXPECT_NEAR(y.to_vector<double>()[1], std::exp(4.0) + 2.0, 1e-9);
  // Recording is back on after the scope.
  EXPECT_NE((x * 2.0).grad_fn(), nullptr);
}

TEST(Autograd, DetachCutsTheGraphButSharesStorage) {
  Tensor x = leaf({1, 2, 3}, {3});
  Tensor d = x.detach();
  EXPECT_FALSE(d.requires_grad());
  EXPECT_TRUE(d.is_leaf());
  EXPECT_EQ(d.storage().get(), x.storage().get());
  Tensor h = x * 2.0;
  Tensor hd = h.detach();
  EXPECT_FALSE(hd.requires_grad());
  EXPECT_EQ(hd.grad_fn(), nullptr);
  EXPECT_EQ(hd.storage().get(), h.storage().get());

  // d(x * stop_gradient(x))/dx = x, not 2x.
  sum(x * x.detach()).backward();
  EXPECT_EQ(grad_of(x), (Values{1, 2, 3}));
}

TEST(Autograd, UnusedLeafGetsNoGradient) {
  Tensor x = leaf({1, 2}, {2});
  Tensor unused = leaf({3}, {1});
  sum(x).backward();
  EXPECT_FALSE(unused.grad().defined());
  // A leaf reached only through an input that needs no gradient gets none either.
  Tensor c = ones({2}, {.dtype = DType::f64});
  sum(x * c).backward();
  EXPECT_FALSE(c.grad().defined());
}

// ---------------------------------------------------------------- version counter

TEST(Autograd, ModifyingASavedInputInPlaceIsAnError) {
  Tensor x = leaf({1, 2, 3}, {3});
  Tensor a = x * 2.0;
  Tensor b = a * a;  // mul saves both operands: a
  a.add_(ones({3}, {.dtype = DType::f64}));
  expect_error([&] { sum(b).backward(); }, "modified by an in-place operation");
}

TEST(Autograd, ModifyingASavedOutputInPlaceIsAnError) {
  Tensor x = leaf({0.1, 0.2}, {2});
  Tensor b = tanh(x * 1.0);  // tanh's gradient is computed from its output: b is saved
  b.mul_(2.0);
  expect_error([&] { sum(b).backward(); }, "modified by an in-place operation");
}

TEST(Autograd, InPlaceChangesBeforeUseAreFine) {
  Tensor x = leaf({1, 2}, {2});
  Tensor a = x * 1.0;
  a.mul_(3.0);  // not recorded by autograd, and nothing saved a yet
  sum(a * a).backward();
  // a = 3x by value, but the graph only knows a = x * 1: d/dx sum(a^2) = 2a * 1.
  EXPECT_EQ(grad_of(x), (Values{6, 12}));
}

// ---------------------------------------------------------------- hooks

TEST(Autograd, HookOnALeafReplacesItsGradient) {
  Tensor x = leaf({1, 2}, {2});
  int calls = 0;
  x.register_hook([&](const Tensor& g) {
    ++calls;
    return g * 2.0;
  });
  sum(x * x).backward();
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(grad_of(x), (Values{4, 8}));
}

TEST(Autograd, HookOnAnIntermediateSeesAndChangesItsGradient) {
  Tensor x = leaf({1, 2}, {2});
  Tensor h = x * 3.0;
  Values seen;
  h.register_hook([&](const Tensor& g) {
    seen = g.to_vector<double>();
    return Tensor();  // observe only
  });
  sum(h * h).backward();
  EXPECT_EQ(seen, (Values{6, 12}));       // dL/dh = 2h
  EXPECT_EQ(grad_of(x), (Values{18, 36}));  // 3 * 2h

  Tensor y = leaf({1, 2}, {2});
  Tensor k = y * 3.0;
  k.register_hook([](const Tensor& g) { return g + 1.0; });
  k.register_hook([](const Tensor& g) { return g * 10.0; });  // sees the first hook's result
  sum(k).backward();
  EXPECT_EQ(grad_of(y), (Values{60, 60}));  // ((1 + 1) * 10) * 3
}

TEST(Autograd, HooksDoNotRecordGraph) {
  Tensor x = leaf({1, 2}, {2});
  bool recorded = true;
  x.register_hook([&](const Tensor& g) {
    Tensor r = g * 2.0;
    recorded = r.requires_grad();
    return r;
  });
  sum(x).backward();
  EXPECT_FALSE(recorded);
  EXPECT_FALSE(x.grad().requires_grad());
}

TEST(Autograd, PostAccumulateGradHooks) {
  Tensor w1 = leaf({1, 2}, {2});
  Tensor w2 = leaf({3}, {1});
  std::vector<std::string> order;
  std::vector<Values> grads_seen;
  w1.register_post_accumulate_grad_hook([&](Tensor& p) {
    order.push_back("w1");
    grads_seen.push_back(p.grad().to_vector<double>());
  });
  w2.register_post_accumulate_grad_hook([&](Tensor& p) {
    order.push_back("w2");
    grads_seen.push_back(p.grad().to_vector<double>());
  });
  // w1 is used twice but accumulates once; w2 is used after w1.
  Tensor loss = sum(w1 * w1) + sum(w1 * 2.0) + sum(w2 * 5.0);
  loss.backward();
  ASSERT_EQ(order, (std::vector<std::string>{"w2", "w1"}));  // reverse order of use
  EXPECT_EQ(grads_seen[0], (Values{5}));                      // .grad already set
  EXPECT_EQ(grads_seen[1], (Values{4, 6}));                   // 2 w1 + 2, both uses summed

  // Once per backward, each time after accumulation.
  (sum(w1 * w1) + sum(w1 * 2.0) + sum(w2 * 5.0)).backward();
  ASSERT_EQ(order, (std::vector<std::string>{"w2", "w1", "w2", "w1"}));
  EXPECT_EQ(grads_seen[2], (Values{10}));
  EXPECT_EQ(grads_seen[3], (Values{8, 12}));
}

// ---------------------------------------------------------------- graph shapes

TEST(Autograd, FirstGradientNeverAliasesAnotherTensor) {
  // AccumulateGrad keeps the incoming gradient without a copy only when nothing else can see
  // it. Where two leaves get the same tensor from one node (add's backward passes its gradient
  // to both inputs), or a leaf's gradient is a broadcast or a view, each .grad must still be its
  // own memory: writing into one changes nothing else.
  Tensor a = leaf({1, 2, 3}, {3}), b = leaf({4, 5, 6}, {3});
  sum(a + b).backward();
  a.mutable_grad().mul_(10.0);
  EXPECT_EQ(grad_of(a), (Values{10, 10, 10}));
  EXPECT_EQ(grad_of(b), (Values{1, 1, 1}));

  Tensor c = leaf({1, 2}, {2, 1}), d = leaf({1, 2, 3}, {1, 3});
  sum(c * d).backward();  // broadcasts both ways: the gradients are reductions of [2, 3]
  c.mutable_grad().zero_();
  EXPECT_EQ(grad_of(d), (Values{3, 3, 3}));

  Tensor e = leaf({1, 2, 3, 4}, {4});
  Tensor parts = e.view({2, 2});
  sum(parts * 2.0).backward();  // e's gradient arrives through a view
  e.mutable_grad().zero_();
  sum(e * 1.0).backward();
  EXPECT_EQ(grad_of(e), (Values{1, 1, 1, 1}));
}

TEST(Autograd, DiamondGraphsAccumulate) {
  Tensor x = leaf({1, 2, 3}, {3});
  // x used twice by one op, and twice more on separate branches.
  sum(x * x + x).backward();
  EXPECT_EQ(grad_of(x), (Values{3, 5, 7}));  // 2x + 1

  Tensor y = leaf({1, 2, 3}, {3});
  Tensor a = y * 2.0, b = y * 3.0;
  sum(a * b).backward();  // 6 y^2
  EXPECT_EQ(grad_of(y), (Values{12, 24, 36}));

  Tensor z = leaf({0.25, -0.5}, {2});
  Tensor e = exp(z);
  sum(e * e + e).backward();  // (2e + 1) e
  const Values g = grad_of(z);
  for (int i = 0; i < 2; ++i) {
    const double ev = std::exp(z.to_vector<double>()[i]);
    EXPECT_NEAR(g[i], (2 * ev + 1) * ev, 1e-12);
  }
}

TEST(Autograd, ViewsInTheGraph) {
  // Slices scatter their gradient back; untouched elements get zero.
  Tensor x = leaf({1, 2, 3, 4}, {4});
  sum(x.slice(0, 0, 4, 2) * 3.0).backward();
  EXPECT_EQ(grad_of(x), (Values{3, 0, 3, 0}));

  // expand sums its gradient over the broadcast dims.
  Tensor c = leaf({1, 2, 3}, {3, 1});
  sum(c.expand({2, 3, 5})).backward();
  EXPECT_EQ(grad_of(c), (Values{10, 10, 10}));

  Tensor m = leaf({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor w = from_vector(Values{1, 10, 100, 1000, 10000, 100000}, {3, 2}, {.dtype = DType::f64});
  sum(m.t() * w).backward();  // grad is w transposed back
  EXPECT_EQ(grad_of(m), (Values{1, 100, 10000, 10, 1000, 100000}));
}

TEST(Autograd, GradcheckThroughViews) {
  using V = std::vector<Tensor>;
  // slice with a step, on both operands of a product
  EXPECT_GRADCHECK([](const V& in) { return in[0].slice(1, 0, 4, 2) * in[0].slice(1, 1, 4, 2); },
                   V{rand_input({3, 4}, -1, 1, 1)});
  // expand against a full tensor
  EXPECT_GRADCHECK([](const V& in) { return in[0].expand({2, 3, 4}) * in[1]; },
                   V{rand_input({3, 1}, -1, 1, 2), rand_input({2, 3, 4}, -1, 1, 3)});
  // permute, reshape (a view here: dims 1 and 2 still merge), reshape (a copy), view
  EXPECT_GRADCHECK(
      [](const V& in) {
        Tensor p = in[0].permute({2, 0, 1}).reshape({4, 6});
        return p * p.reshape({6, 4}).t().contiguous().view({4, 6});
      },
      V{rand_input({2, 3, 4}, -1, 1, 4)});
  // select, narrow, unsqueeze, squeeze, flatten, transpose
  EXPECT_GRADCHECK(
      [](const V& in) {
        Tensor a = in[0].select(0, 1).narrow(1, 1, 2).unsqueeze(0);  // [1, 3, 2]
        Tensor b = in[0].transpose(0, 2).flatten(1).squeeze();        // [4, 6]
        return a.squeeze(0).flatten() * b.narrow(0, 1, 1).flatten().narrow(0, 0, 6);
      },
      V{rand_input({2, 3, 4}, -1, 1, 5)});
  // A non-contiguous leaf.
  Tensor t = rand_input({4, 3}, -1, 1, 6).detach().t().requires_grad_();
  EXPECT_FALSE(t.is_contiguous());
  EXPECT_GRADCHECK([](const V& in) { return exp(in[0]) * in[0].select(1, 2).unsqueeze(1); },
                   V{t});
}

// ---------------------------------------------------------------- order

TEST(Autograd, NodesRunInReverseCreationOrder) {
  auto run = [] {
    std::vector<std::string> order;
    Tensor x = leaf({1, 2}, {2});
    Tensor a = x * 2.0;
    Tensor b = x * 3.0;
    Tensor c = a * b;
    a.register_hook([&](const Tensor&) { order.push_back("a"); return Tensor(); });
    b.register_hook([&](const Tensor&) { order.push_back("b"); return Tensor(); });
    c.register_hook([&](const Tensor&) { order.push_back("c"); return Tensor(); });
    x.register_hook([&](const Tensor&) { order.push_back("x"); return Tensor(); });
    sum(c).backward();
    return order;
  };
  const std::vector<std::string> first = run();
  EXPECT_EQ(first, (std::vector<std::string>{"c", "b", "a", "x"}));
  for (int i = 0; i < 3; ++i) EXPECT_EQ(run(), first);
}

TEST(Autograd, GradientsAreBitwiseReproducible) {
  auto grads = [] {
    Tensor x = rand_input({16, 8}, -1, 1, 11);
    Tensor w = rand_input({8, 5}, -1, 1, 12);
    Tensor h = tanh(matmul(x, w));
    Tensor y = sum(h * h.slice(0, 0, 16, 1) + exp(h).t().t());
    y.backward();
    Values g = x.grad().to_vector<double>();
    Values gw = w.grad().to_vector<double>();
    g.insert(g.end(), gw.begin(), gw.end());
    return g;
  };
  const Values first = grads();
  for (int i = 0; i < 3; ++i) EXPECT_EQ(grads(), first);
}

}  // namespace
}  // namespace kiln

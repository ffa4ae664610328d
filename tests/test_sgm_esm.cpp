// sgm's explicit score matching (loss "esm") against a gmm dataset's exact score: the loss
// is the weighted squared distance between the model's score and the exact score of the
// noised data at the loss's own points (so it vanishes exactly at the true score, unlike
// dsm and ism), training on it drives the score error down, and a dataset without an
// exact score is refused when the model is created.
#include <memory>
#include <string>

#include <catch2/catch.hpp>
#include <ATen/Parallel.h>
#include <torch/optim.h>

#include <mfglab/sdk.h>

#include "plugin_fixture.h"
#include "plugin_host.h"

namespace {

using nlohmann::json;
using torch::Tensor;

const mfglab::engine::PluginHost& host() { return mfglab::test::plugin_host(); }

// A dataset and an sgm model, built by the engine's Assembler (plugin_fixture.h): the dataset
// first, then the model with ctx.dataset pointing at it (or not, as a host before SDK 1.1).
struct Setup {
  mfglab::test::PluginSetup run;
  mfglab::RunContext& ctx = run.ctx;
  std::unique_ptr<mfglab::Dataset>& dataset = run.objects().dataset;
  std::unique_ptr<mfglab::Model>& model = run.objects().model;

  Setup(const std::string& dataset_name, const json& dataset_params, const json& model_params,
        torch::Dtype dtype, uint64_t seed = 5, bool give_dataset = true)
      : run(mfglab::test::run_context(seed, dtype), host()) {
    run.dataset(dataset_name, dataset_params);
    if (!give_dataset) ctx.dataset = nullptr;
    run.model("sgm", model_params);
  }
};

// Four generated components in 2D (well separated: a score with sharp transitions).
json mixture(int64_t dim = 2) {
  return {{"k", 4}, {"dim", dim}, {"mean_scale", 2.0}, {"std", 0.4}, {"train_size", 4000}, {"test_size", 2000}};
}

}  // namespace

TEST_CASE("sgm esm: the loss is the weighted squared distance to the exact score", "[sgm][esm]") {
  for (const char* parameterization : {"score", "potential"})
    for (const char* weighting : {"sigma2", "likelihood"})
      for (const char* process : {"vp", "ve"}) {
        CAPTURE(parameterization, weighting, process);
        Setup s("gmm", mixture(3), {{"width", 16}, {"depth", 2}, {"loss", "esm"}, {"process", process},
                                     {"parameterization", parameterization}, {"weighting", weighting}},
                torch::kFloat64);
        auto& model = *s.model;
        auto* exact = mfglab::capability<mfglab::ExactDensity>(s.dataset.get(), mfglab::kExactDensity);
        auto* fp = mfglab::capability<mfglab::ForwardProcess>(&model, mfglab::kForwardProcess);
        REQUIRE(exact != nullptr);
        REQUIRE(fp != nullptr);
        const auto batch = s.dataset->train().narrow(0, 0, 300);
        const int64_t n = batch.size(0), d = batch.size(1);

        // Replays the loss's draws (t ~ U(eps, T) into the input's time column, then z)
        // from a copy of the generator taken before the call.
        torch::Generator replay = s.ctx.generator.clone();
        const auto terms = model.loss(batch);
        REQUIRE(terms.size() == 1);
        CHECK(terms[0].name == "esm");
        const double loss = terms[0].value.item<double>();

        auto input = torch::empty({n, d + 1}, torch::kFloat64);
        auto t = input.narrow(1, d, 1);
        t.uniform_(fp->t_min(), fp->t_max(), replay);
        auto z = torch::randn({n, d}, replay, torch::kFloat64);
        auto alpha = fp->alpha(t), sigma = fp->sigma(t);
        auto xt = alpha * batch + sigma * z;
        auto model_score = model.score(xt, t).detach();
        auto exact_score = exact->score(xt, alpha, sigma);
        auto lambda = std::string(weighting) == "sigma2" ? sigma.square() : model.diffusion(t).square();
        const double expected = (lambda * (model_score - exact_score).square().sum(1, true)).mean().item<double>();
        CHECK(loss == Approx(expected).epsilon(1e-10));
        CHECK(loss > 0);  // an untrained network is not the true score

        // At the exact score the same expression is zero: that of dsm is not (it keeps the
        // conditional variance of the noise given x_t).
        const double dsm_at_exact = (sigma.square() * (exact_score + z / sigma).square().sum(1, true)).mean().item<double>();
        CHECK(dsm_at_exact > 0.1);
      }
}

TEST_CASE("sgm esm: the loss has a gradient for every network parameter", "[sgm][esm]") {
  for (const char* parameterization : {"score", "potential"}) {
    CAPTURE(parameterization);
    Setup s("gmm", mixture(), {{"width", 16}, {"depth", 2}, {"loss", "esm"}, {"parameterization", parameterization}},
            torch::kFloat32);
    auto loss = s.model->loss(s.dataset->train().narrow(0, 0, 64)).at(0).value;
    loss.backward();
    auto params = s.model->parameters();  // W0, b0, ..., W_last, b_last
    // The potential's output bias shifts U by a constant: its x-gradient, the score, does not see it.
    if (std::string(parameterization) == "potential") params.pop_back();
    for (const auto& p : params) {
      REQUIRE(p.grad().defined());
      CHECK(p.grad().abs().sum().item<double>() > 0);
    }
  }
}

TEST_CASE("sgm esm: training on it reduces the score error", "[sgm][esm][train]") {
  Setup s("gmm", mixture(), {{"width", 64}, {"depth", 2}, {"loss", "esm"}}, torch::kFloat32);
  auto& model = *s.model;
  mfglab::RunContext metric_ctx;
  metric_ctx.generator = at::make_generator<at::CPUGeneratorImpl>(11);
  metric_ctx.data_dim = 2;
  auto metric = mfglab::test::create<mfglab::Metric>(host(), "score_error", json{{"times", {0.05, 0.2, 0.5, 0.9}}, {"points", 2000}}, metric_ctx);
  auto score_error = [&] {
    mfglab::MetricInput in;
    in.reference = s.dataset->test();
    in.model = &model;
    in.dataset = s.dataset.get();
    for (const auto& [name, value] : metric->evaluate(in))
      if (name == "score_error") return value;
    FAIL("score_error reported no integrated error");
    return 0.0;
  };
  const double before = score_error();

  torch::Generator g = at::make_generator<at::CPUGeneratorImpl>(21);
  const auto train = s.dataset->train();
  torch::optim::Adam adam(model.parameters(), torch::optim::AdamOptions(2e-3));
  double first = 0, last = 0;
  const int steps = 1500, window = 100;
  for (int i = 0; i < steps; ++i) {
    adam.zero_grad();
    auto batch = train.index_select(0, torch::randint(train.size(0), {256}, g, torch::kLong));
    auto loss = model.loss(batch).at(0).value;
    loss.backward();
    adam.step();
    if (i < window) first += loss.item<double>() / window;
    if (i >= steps - window) last += loss.item<double>() / window;
  }
  const double after = score_error();
  CAPTURE(before, after, first, last);
  CHECK(after < 0.2 * before);
  CHECK(last < 0.2 * first);
}

TEST_CASE("sgm esm: refused at creation without an exact score", "[sgm][esm]") {
  const json params = {{"loss", "esm"}};
  // toy2d has samples only, no density.
  CHECK_THROWS_WITH(Setup("toy2d", {{"name", "checkerboard"}, {"train_size", 100}, {"test_size", 10}}, params,
                          torch::kFloat32),
                    Catch::Contains("loss \"esm\"") && Catch::Contains("mfglab.exact_density/1") &&
                        Catch::Contains("use loss \"dsm\" or \"ism\""));
  // A model created outside a run, with no dataset in its context.
  CHECK_THROWS_WITH(Setup("gmm", mixture(), params, torch::kFloat32, 5, /*give_dataset=*/false),
                    Catch::Contains("loss \"esm\"") && Catch::Contains("no dataset"));
  // The other losses do not need one.
  CHECK_NOTHROW(Setup("toy2d", {{"name", "checkerboard"}, {"train_size", 100}, {"test_size", 10}},
                      {{"loss", "dsm"}}, torch::kFloat32));
}

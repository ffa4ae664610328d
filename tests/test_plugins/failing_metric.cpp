// A metric that always throws while evaluating (test plugin): the engine must keep the run,
// its other metrics and the trained model, and say which metric failed and why.
#include <mfglab/plugin.h>

namespace {

class FailingMetric final : public mfglab::Metric {
 public:
  FailingMetric(const mfglab::Params&, const mfglab::RunContext&) {}
  mfglab::MetricValues evaluate(const mfglab::MetricInput&) override {
    throw mfglab::Error("the vector field is not finite at t = 0.5 (deliberate)");
  }
};

}  // namespace

MFGLAB_PLUGIN(FailingMetric, MFGLAB_KIND_METRIC, "failing_metric", "1.0.0",
              "throws on every evaluation (test plugin)", "")

// (f) A valid manifest whose constructor throws: loading succeeds, creating fails, and
// the factory wrapper must turn the exception into an error message.
#include <mfglab/plugin.h>

namespace {

class Failing final : public mfglab::Metric {
 public:
  Failing(const mfglab::Params&, const mfglab::RunContext&) {
    throw mfglab::Error("deliberate failure");
  }
  mfglab::MetricValues evaluate(const mfglab::MetricInput&) override { return {}; }
};

}  // namespace

MFGLAB_PLUGIN(Failing, MFGLAB_KIND_METRIC, "failing", "1.0.0", "Throws from its constructor", "")

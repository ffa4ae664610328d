// (g) Built twice, as two libraries that both claim the name "twin".
#include <mfglab/plugin.h>

namespace {

class Twin final : public mfglab::Metric {
 public:
  Twin(const mfglab::Params&, const mfglab::RunContext&) {}
  mfglab::MetricValues evaluate(const mfglab::MetricInput&) override { return {{"twin", 0.0}}; }
};

}  // namespace

MFGLAB_PLUGIN(Twin, MFGLAB_KIND_METRIC, "twin", "1.0.0", "One of two plugins with the same name", "")

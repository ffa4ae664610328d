// (h) A correct plugin among the broken ones: it must still load and work.
#include <mfglab/plugin.h>

namespace {

class GoodMetric final : public mfglab::Metric {
 public:
  GoodMetric(const mfglab::Params& params, const mfglab::RunContext&)
      : value_(params.number("value")) {}
  mfglab::MetricValues evaluate(const mfglab::MetricInput&) override { return {{"good", value_}}; }

 private:
  double value_;
};

}  // namespace

MFGLAB_PLUGIN(GoodMetric, MFGLAB_KIND_METRIC, "good_metric", "1.0.0", "Returns a constant", "",
              mfglab::number_param("value", 1.5, "the constant returned").at_least(0),
              mfglab::int_param("count", 3, "an integer in [1, 10]").range(1, 10),
              mfglab::choice_param("mode", "fast", "fast|slow", "a choice"),
              mfglab::bool_param("flag", false, "a flag"),
              mfglab::numbers_param("scales", {1.0}, "positive numbers").above(0))

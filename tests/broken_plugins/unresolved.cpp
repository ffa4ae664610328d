// Needs a symbol that no library provides, and is linked without --no-undefined (as a
// plugin built outside mfglab_add_plugin may be). With lazy binding it would list and
// validate, then end the process with exit 127 when evaluate() first ran; the host opens
// libraries with immediate binding and refuses it with the loader's message.
#include <mfglab/plugin.h>

extern "C" double mfglab_test_missing_symbol(void);

namespace {

class Unresolved final : public mfglab::Metric {
 public:
  Unresolved(const mfglab::Params&, const mfglab::RunContext&) {}
  mfglab::MetricValues evaluate(const mfglab::MetricInput&) override {
    return {{"unresolved", mfglab_test_missing_symbol()}};
  }
};

}  // namespace

MFGLAB_PLUGIN(Unresolved, MFGLAB_KIND_METRIC, "unresolved", "1.0.0", "Calls a function nobody defines", "")

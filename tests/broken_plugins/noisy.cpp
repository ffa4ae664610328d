// Not broken, but rude: prints to stdout from a static initialiser and from its entry
// point, in every way a library can (stdio, iostream, write(2)). The host points stdout at
// stderr while it loads libraries, so `mfglab plugins --json` stays valid JSON.
#include <unistd.h>

#include <cstdio>
#include <iostream>

#include <mfglab/plugin.h>

namespace {

class Noisy final : public mfglab::Metric {
 public:
  Noisy(const mfglab::Params&, const mfglab::RunContext&) {}
  mfglab::MetricValues evaluate(const mfglab::MetricInput&) override { return {{"noisy", 1.0}}; }
};

const int noise = [] {
  std::printf("noise from a static initialiser (stdio)\n");
  std::cout << "noise from a static initialiser (iostream)" << std::endl;
  return 0;
}();

}  // namespace

extern "C" __attribute__((visibility("default"))) const mfglab_manifest* mfglab_plugin_entry(void) {
  std::printf("noise from the entry point (stdio, unflushed)");
  static const char raw[] = "noise from the entry point (write)\n";
  if (::write(STDOUT_FILENO, raw, sizeof(raw) - 1) < 0) return nullptr;
  static const mfglab::detail::ManifestHolder holder(MFGLAB_KIND_METRIC, "noisy", "1.0.0",
                                                    "Prints to stdout while it loads", "",
                                                    &mfglab::detail::create<Noisy>, {});
  return noise == 0 ? holder.get() : nullptr;
}

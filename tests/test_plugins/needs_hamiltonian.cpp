// A regularizer that needs the experiment's Hamiltonian: the experiment validator must
// refuse it when the experiment declares none.
#include <mfglab/plugin.h>

namespace {

class NeedsHamiltonian final : public mfglab::Regularizer {
 public:
  NeedsHamiltonian(const mfglab::Params&, const mfglab::RunContext& context)
      : hamiltonian_(context.hamiltonian) {
    if (hamiltonian_ == nullptr) throw mfglab::Error("needs a Hamiltonian");
  }
  torch::Tensor penalty(mfglab::Model&, const torch::Tensor& batch) override {
    return hamiltonian_->hamiltonian(batch, batch).mean();
  }

 private:
  mfglab::Hamiltonian* hamiltonian_;
};

}  // namespace

MFGLAB_PLUGIN(NeedsHamiltonian, MFGLAB_KIND_REGULARIZER, "needs_hamiltonian", "1.0.0",
              "Mean Hamiltonian at p = x (test plugin)", "hamiltonian")

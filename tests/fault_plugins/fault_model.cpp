// A small model that misbehaves on purpose, for the isolation tests: at training iteration
// `at` it segfaults, aborts, calls exit(3), throws an int, allocates without end, loops
// forever, or returns a NaN loss. Its velocity is 0 ([N, d]); with fault "bad_velocity" it
// returns [N] instead, against the SDK's contract. With fault "none" it is a healthy model: x ~ w + N(0, I), trained by
// mean |x - w|² (so its samples depend on the seed, the batch order and every step).
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

#include <mfglab/plugin.h>

namespace {

using torch::Tensor;

class FaultModel final : public mfglab::Model {
 public:
  FaultModel(const mfglab::Params& params, const mfglab::RunContext& ctx)
      : fault_(params.string("fault")),
        at_(params.integer("at")),
        generator_(ctx.generator),
        options_(ctx.options()) {
    w_ = torch::randn({ctx.data_dim}, generator_, options_).requires_grad_(true);
  }

  std::vector<Tensor> parameters() override { return {w_}; }

  mfglab::LossTerms loss(const Tensor& batch) override {
    auto fit = (batch - w_).square().sum(1).mean();
    if (++calls_ == at_) {
      if (fault_ == "nan") return {{"fit", fit * std::numeric_limits<double>::quiet_NaN()}};
      misbehave();
    }
    return {{"fit", fit}};
  }

  Tensor velocity(const Tensor& x, const Tensor&) override {
    if (fault_ == "bad_velocity") return torch::zeros({x.size(0)}, options_);
    return torch::zeros_like(x);
  }

  Tensor sample(int64_t n) override {
    torch::NoGradGuard no_grad;
    return w_.detach() + torch::randn({n, w_.size(0)}, generator_, options_);
  }

 private:
  void misbehave() {
    if (fault_ == "segfault") {
      volatile int* null = nullptr;
      *null = 1;
    } else if (fault_ == "abort") {
      std::abort();
    } else if (fault_ == "exit") {
      std::exit(3);
    } else if (fault_ == "throw_int") {
      throw 42;
    } else if (fault_ == "hog") {
      for (;;) {  // touch every page, so the memory is really used
        char* block = static_cast<char*>(std::malloc(64 << 20));
        if (!block) throw std::bad_alloc();
        std::memset(block, 1, 64 << 20);
        hoard_.push_back(block);
      }
    } else if (fault_ == "hang") {
      for (volatile bool forever = true; forever;) {
      }
    }
  }

  std::string fault_;
  int64_t at_, calls_ = 0;
  torch::Generator generator_;
  torch::TensorOptions options_;
  Tensor w_;
  std::vector<char*> hoard_;
};

}  // namespace

MFGLAB_PLUGIN(FaultModel, MFGLAB_KIND_MODEL, "fault_model", "1.0.0",
              "x ~ w + N(0, I) that misbehaves at one training iteration (test plugin)", "velocity",
              mfglab::choice_param("fault", "none", "none|segfault|abort|exit|throw_int|hog|hang|nan|bad_velocity",
                                   "what happens at iteration `at`"),
              mfglab::int_param("at", 5, "the training iteration (1-based, counted in this process) that misbehaves").at_least(1))

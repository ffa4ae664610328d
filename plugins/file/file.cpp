// User data from a file: a numpy .npy array or a CSV table of numbers, split at random
// (from the run's generator) into a training and a held-out set, optionally
// standardised with statistics of the training split only.
//
// The file is read by the SDK's readers (<mfglab/array_io.h>), which the engine uses too:
// regular files only, every size checked against the file before anything is allocated,
// and every error naming the file and, where it applies, the line (CSV) or row (.npy).
#include <mfglab/array_io.h>
#include <mfglab/plugin.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <string>

namespace {

using mfglab::Error;
using torch::Tensor;

const auto kF64 = torch::TensorOptions().dtype(torch::kFloat64);

const auto kPath =
    mfglab::string_param("path", "", "the data file (relative paths are taken from the working directory)");
const auto kFormat = mfglab::choice_param("format", "auto", "auto|npy|csv", "auto: by extension (.npy; .csv or .txt)");
const auto kTestFraction = mfglab::number_param("test_fraction", 0.2, "share of the rows held out").above(0).below(1);
const auto kStandardize = mfglab::bool_param(
    "standardize", false, "centre and scale each column by the training split's mean and std (population)");
const auto kMaxRows = mfglab::int_param("max_rows", 0, "read only the first max_rows rows (0: all)").at_least(0);

// The rows of a data file as a float64 [N, d] tensor: N >= 1 rows, d >= 1 finite columns.
Tensor load(const std::string& path, const std::string& format, int64_t max_rows) {
  mfglab::array_io::ReadOptions options;
  options.max_rows = max_rows;
  auto a = format == "npy" ? mfglab::array_io::read_npy(path, options) : mfglab::array_io::read_csv(path, options);
  if (a.shape.empty() || a.shape.size() > 2)
    throw Error(path + ": expected an array of shape (N,) or (N, d), got " + std::to_string(a.shape.size()) +
                " dimensions");
  if (a.shape.size() == 1) a.shape.push_back(1);
  if (a.values.empty()) throw Error(path + ": holds an empty array, shape " + std::to_string(a.shape[0]) + " x " +
                                    std::to_string(a.shape[1]));
  mfglab::array_io::require_finite(a, path);
  auto x = torch::empty(a.shape, kF64);
  std::memcpy(x.data_ptr<double>(), a.values.data(), a.values.size() * sizeof(double));
  return x;
}

std::string lower_extension(const std::string& path) {
  std::string ext = std::filesystem::path(path).extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  return ext;
}

class FileDataset final : public mfglab::Dataset {
 public:
  FileDataset(const mfglab::Params& params, const mfglab::RunContext& ctx) {
    const std::string path = params[kPath];
    if (path.empty()) throw Error("params.path: give the data file (.npy or .csv)");
    std::string format = params[kFormat];
    if (format == "auto") {
      const std::string ext = lower_extension(path);
      if (ext == ".npy") format = "npy";
      else if (ext == ".csv" || ext == ".txt") format = "csv";
      else
        throw Error("params.format: cannot tell the format of " + path + " from its extension '" + ext +
                    "'; set params.format to npy or csv");
    }
    const int64_t max_rows = params[kMaxRows];
    const Tensor x = load(path, format, max_rows);

    // n_test = round(test_fraction * n), at least 1 and leaving at least 1 for training.
    const int64_t n = x.size(0);
    if (n < 2) throw Error(path + ": holds " + std::to_string(n) + " row; at least 2 are needed to "
                           "split it into a training and a held-out set");
    const int64_t n_test = std::clamp<int64_t>(std::llround(params[kTestFraction] * n), 1, n - 1);
    torch::Generator g = ctx.generator;
    const auto order = torch::randperm(n, g, torch::kLong);
    Tensor train = x.index_select(0, order.slice(0, 0, n - n_test));
    Tensor test = x.index_select(0, order.slice(0, n - n_test));

    if (params[kStandardize]) {
      // Population statistics of the training split, so that the training set has mean
      // 0 and std 1 exactly; a constant column is only centred.
      const auto mean = train.mean(0);
      auto std = train.std(0, /*unbiased=*/false);
      const auto constant = std == 0;
      if (constant.any().item<bool>())
        ctx.warn("file: " + std::to_string(constant.sum().item<int64_t>()) +
                 " column(s) are constant on the training split; they are centred, not scaled");
      std = torch::where(constant, torch::ones_like(std), std);
      train = (train - mean) / std;
      test = (test - mean) / std;
    }
    train_ = train.to(ctx.options());
    test_ = test.to(ctx.options());
    ctx.info("file: " + std::to_string(n) + " rows x " + std::to_string(x.size(1)) + " columns from " +
             path + "; " + std::to_string(n - n_test) + " for training, " +
             std::to_string(n_test) + " held out");
  }

  torch::Tensor train() override { return train_; }
  torch::Tensor test() override { return test_; }

 private:
  torch::Tensor train_, test_;
};

}  // namespace

MFGLAB_PLUGIN(FileDataset, MFGLAB_KIND_DATASET, "file", "1.0.0",
              "User data from a .npy (float32/float64, (N,) or (N, d)) or CSV file, split at "
              "random into training and held-out sets",
              "", kPath, kFormat, kTestFraction, kStandardize, kMaxRows)

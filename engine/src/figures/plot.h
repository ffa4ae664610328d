// The standard figures of a run directory and of a comparison, drawn with figure.h.
#pragma once

#include <string>
#include <vector>

#include "figure.h"

namespace mfglab::engine {

// A PNG written by the functions below, with the data area of each of its panels in PNG
// pixels (for tests and for tools that annotate figures).
struct PlotFile {
  std::string path;
  std::vector<plot::Rect> panels;
};

// Draws the standard figures of a run directory into it, from whatever it holds:
//   samples.png   generated samples over data.npy (held-out points) when present; a
//                 scatter up to 5000 samples, a 2-D histogram beyond; for d > 2 the first
//                 two coordinates, said in the title;
//   losses.png    every loss term of losses.csv against the iteration, log-y when all
//                 values are positive;
// and whatever plot_model_extras draws. Throws mfglab::Error when the directory does not
// exist or a file is malformed.
std::vector<PlotFile> plot_run(const std::string& run_dir);

// Extension point for models that can show more than samples: they write extra arrays
// into the run directory (their RunContext::output_dir) and these figures appear:
//   density.npy (G x G, row i at y, column j at x) with density_extent.json
//       {"x": [lo, hi], "y": [lo, hi]}                  -> density.png (heat map)
//   trajectories.npy ([T, N, 2] float32/float64, time first) -> trajectories.png
//   hjb_residual.npy ([K, G, G]: K time slices of a G x G grid over (x1, x2), laid out
//       as density.npy) with hjb_residual.json {"x": [lo, hi], "y": [lo, hi], "t": [K
//       times], "equation": "...", "dimension": d} -> hjb_residual.png (one heat map per
//       time, log10 |r| on a shared colour scale)
// (engine/src/results/model_arrays.h computes them from the Model interface.)
std::vector<PlotFile> plot_model_extras(const std::string& run_dir, const std::string& title);

// The run directories (folders holding summary.json) at or under each path, sorted.
// Throws mfglab::Error for a path that does not exist or holds no run.
std::vector<std::string> find_run_dirs(const std::vector<std::string>& paths);

// What plot_compare draws in each panel: the samples over held-out data, or the particle
// paths of trajectories.npy.
enum class CompareView { samples, trajectories };

// One panel per configuration (experiment and label) found under `paths`: the samples (or
// trajectories) of its first successful seed, titled with the headline metric (the first
// metric of summary.json, mean ± std over the successful seeds). Written atomically to
// png_path.
PlotFile plot_compare(const std::vector<std::string>& paths, const std::string& png_path,
                      CompareView what = CompareView::samples);

}  // namespace mfglab::engine

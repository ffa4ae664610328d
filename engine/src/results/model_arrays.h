// Arrays that show a trained model's fields, written into its run directory for the
// figures (plot.h draws whatever of them it finds):
//   density.npy + density_extent.json        exp(log_prob) on a grid    (d = 2, field log_prob)
//   trajectories.npy [T, N, d]               held-out points carried along the flow from
//                                            t = 0 to the horizon       (field velocity)
//   hjb_residual.npy [K, G, G] + hjb_residual.json
//                                            the model's optimality-PDE residual on (x1, x2)
//                                            slices at K times, other coordinates 0
//                                            (capability mfglab.hjb_residual/1)
#pragma once

#include <string>
#include <vector>

#include <mfglab/sdk.h>

namespace mfglab::engine {

// Writes every array the model can give and returns one message per array that could not
// be computed (a figure is a convenience: the caller logs these, the run stays good).
// `data` are held-out points: they set the grid's extent and start the trajectories.
std::vector<std::string> write_model_arrays(Model& model, const std::vector<std::string>& fields,
                                            const torch::Tensor& data, const std::string& dir);

}  // namespace mfglab::engine

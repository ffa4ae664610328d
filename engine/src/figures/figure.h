// A small plotting layer of our own, drawn with Cairo: figures made of framed axes with
// nice ticks, scatter, 2-D histograms, lines, heat-map images, colour bars and legends.
// It knows nothing of runs; plot.h draws the figures of run directories with it.
#pragma once

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include <cairo.h>

namespace mfglab::engine {

namespace plot {

struct Color {
  double r = 0, g = 0, b = 0, a = 1;
  Color with_alpha(double alpha) const { return {r, g, b, alpha}; }
};

// Distinguishable colours for lines, cycling.
Color palette(int i);
// The sequential colour scale of heat maps and histograms: t in [0, 1], dark to light.
Color colormap(double t);

// A rectangle in figure pixels (logical pixels: the PNG has `scale` device pixels per unit).
struct Rect {
  double x = 0, y = 0, w = 0, h = 0;
  bool contains(double px, double py) const { return px >= x && px <= x + w && py >= y && py <= y + h; }
};

// [lo, hi]; empty until something is included.
struct Range {
  double lo = NAN, hi = NAN;
  bool valid() const { return std::isfinite(lo) && std::isfinite(hi) && hi >= lo; }
  void include(double v);
  void include(const Range& r);
};

// `r` widened by `frac` of its span on each side (in log10 space with `log_scale`); a
// zero-width range is widened around its value, an empty one becomes [0, 1] ([1, 10]).
Range padded(Range r, double frac, bool log_scale = false);

// "Nice" tick positions covering [lo, hi]: multiples of 1, 2, 2.5 or 5 x 10^k, about
// `target` of them.
std::vector<double> nice_ticks(double lo, double hi, int target);
// Labels for ticks with a common step: as few digits as tell them apart, Unicode minus,
// and a x10ⁿ form for very large or small values.
std::vector<std::string> tick_labels(const std::vector<double>& ticks);

enum class Legend { none, best, upper_right, upper_left, lower_left, lower_right };

class Figure;

// One framed panel. Series are recorded and drawn when the figure is rendered, so that
// limits, ticks and margins can follow from all the data.
class Axes {
 public:
  void set_title(const std::string& title) { title_ = title; }  // '\n' separates lines; the first is bold
  void set_xlabel(const std::string& s) { xlabel_ = s; }
  void set_ylabel(const std::string& s) { ylabel_ = s; }
  void set_xlim(double lo, double hi) { xlim_ = {lo, hi}; }
  void set_ylim(double lo, double hi) { ylim_ = {lo, hi}; }
  void set_log_y(bool on) { log_y_ = on; }
  // The same data units per pixel on both axes (the wider limits are kept).
  void set_equal_aspect(bool on) { equal_aspect_ = on; }
  // With equal aspect, a panel shorter than its cell sits at the top (default: centred).
  void set_anchor_top(bool on) { anchor_top_ = on; }
  void set_legend(Legend where) { legend_ = where; }
  // Fixes the colour scale of images (default: the image's own range), so that panels
  // drawn side by side share one scale.
  void set_color_range(Range r) { color_range_ = r; }
  // A short grey text in the middle of an otherwise empty panel ("no samples").
  void set_message(const std::string& s) { message_ = s; }

  // Small translucent dots of `radius` pixels.
  void scatter(const std::vector<double>& x, const std::vector<double>& y, Color color,
               double radius = 1.5, const std::string& label = "");
  // Counts on a bins x bins grid over the axes limits, coloured by `colormap` with a
  // colour bar; empty bins stay background.
  void hist2d(const std::vector<double>& x, const std::vector<double>& y, int bins,
              const std::string& colorbar_label = "count");
  void line(const std::vector<double>& x, const std::vector<double>& y, Color color,
            double width = 1.5, const std::string& label = "");
  // A rows x cols grid of values (row 0 at y.lo, column 0 at x.lo) over the rectangle x
  // by y, with a colour bar. Non-finite cells are drawn light grey.
  void image(const std::vector<double>& values, int rows, int cols, Range x, Range y,
             const std::string& colorbar_label = "");

  // Where the data area was drawn (valid after the figure is rendered).
  const Rect& data_area() const { return area_; }

 private:
  friend class Figure;
  struct Series;
  struct Mapping;  // data to pixel coordinates
  explicit Axes(Rect box);
  void render(cairo_t* cr);
  void draw_series(cairo_t* cr, const Mapping& m, Range colors) const;
  void draw_colorbar(cairo_t* cr, const Series& scaled, Range colors) const;
  void draw_legend(cairo_t* cr, const Mapping& m) const;

  Rect box_, area_;
  std::string title_, xlabel_, ylabel_, message_;
  Range xlim_, ylim_, color_range_;
  bool log_y_ = false, equal_aspect_ = false, anchor_top_ = false;
  Legend legend_ = Legend::best;
  std::vector<std::shared_ptr<Series>> series_;
};

// A white canvas of width x height logical pixels holding axes, rendered to PNG at
// `scale` device pixels per logical pixel.
class Figure {
 public:
  Figure(int width, int height, double scale = 2.0);
  // Axes filling `box` (labels and colour bar included).
  Axes& add_axes(Rect box);
  // Cell `index` (row-major, from 0) of a rows x cols grid below the figure title (placed
  // when the figure is rendered, so the title may be set later).
  Axes& subplot(int rows, int cols, int index);
  void set_title(const std::string& title) { title_ = title; }  // '\n' separates lines

  int pixel_width() const;
  int pixel_height() const;
  std::string png_bytes();
  // Written atomically (temporary file and rename).
  void save_png(const std::string& path);
  // Data areas of all axes in PNG pixels, in creation order (valid after rendering).
  std::vector<Rect> pixel_data_areas() const;

 private:
  double title_height() const;
  int width_, height_;
  double scale_;
  std::string title_;
  std::vector<std::unique_ptr<Axes>> axes_;
  struct Cell {
    int rows, cols, index;  // rows == 0: placed by add_axes
  };
  std::vector<Cell> cells_;  // one per axes
};

}  // namespace plot

}  // namespace mfglab::engine

// tlcpu: a training run as one self-contained HTML page.
//
// render_html() returns a single file with everything inline: CSS, the charts as SVG, the
// misclassified images as PNG data: URIs. No script, no font or network request, so it opens
// anywhere, offline, and can be mailed or archived as is. It shows the loss, accuracy,
// learning-rate and epoch-time curves of both phases on one epoch axis with the phase
// boundary marked, the validation confusion matrix as a heatmap, the classification report,
// the misclassified validation images with their class probabilities, the run's settings and
// notes. Every piece of text from the input is HTML-escaped.
#pragma once
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <limits>
#include <string>
#include <utility>
#include <vector>

#include <stb_image_write.h>

#include "tlcpu/core/atomic_file.hpp"
#include "tlcpu/core/error.hpp"
#include "tlcpu/metrics/classification.hpp"

namespace tlcpu {

// One epoch of training. The charts place rows in (phase, epoch) order one after another, so
// phase 2's first epoch follows phase 1's last whatever the epoch numbering (0- or 1-based,
// restarting per phase or not). NaN marks a value not measured (e.g. no validation that epoch).
struct HistoryRow {
    int phase = 1, epoch = 0;
    double loss = NAN, accuracy = NAN, val_loss = NAN, val_accuracy = NAN, lr = NAN, seconds = NAN;
};

struct Misclassified {
    std::string path;                // the image file, shown by name
    int true_class = 0, predicted = 0;
    std::vector<float> probs;        // one per class (softmax), or empty
    std::vector<uint8_t> thumb_rgb;  // thumb_h x thumb_w x 3, row-major; empty: no thumbnail
    int thumb_w = 0, thumb_h = 0;
};

struct ReportInput {
    std::string title;                                          // e.g. "tlcpu train_cpu — brain MRI, ResNet-50 c4"
    std::vector<std::pair<std::string, std::string>> settings;  // the run's configuration, in order
    std::vector<HistoryRow> history;                            // both phases
    ClassificationReport validation;                            // on the validation split
    std::vector<Misclassified> misclassified;                   // the first max_misclassified_shown are shown
    std::string notes;                                          // free text (line breaks kept)
};

inline constexpr size_t max_misclassified_shown = 24;

namespace report_detail {

inline std::string esc(const std::string& s) {
    std::string o;
    o.reserve(s.size() + s.size() / 8);
    for (char c : s) switch (c) {
            case '&': o += "&amp;"; break;
            case '<': o += "&lt;"; break;
            case '>': o += "&gt;"; break;
            case '"': o += "&quot;"; break;
            case '\'': o += "&#39;"; break;
            case '\0': o += "\xEF\xBF\xBD"; break;  // U+FFFD: NUL is not allowed in HTML text
            default: o += c;
        }
    return o;
}

inline std::string base64(const uint8_t* p, size_t n) {
    static const char* a = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string o;
    o.reserve((n + 2) / 3 * 4);
    size_t i = 0;
    for (; i + 2 < n; i += 3) {
        const uint32_t v = uint32_t(p[i]) << 16 | uint32_t(p[i + 1]) << 8 | p[i + 2];
        o += a[v >> 18 & 63], o += a[v >> 12 & 63], o += a[v >> 6 & 63], o += a[v & 63];
    }
    if (i + 1 == n) {
        const uint32_t v = uint32_t(p[i]) << 16;
        o += a[v >> 18 & 63], o += a[v >> 12 & 63], o += "==";
    } else if (i + 2 == n) {
        const uint32_t v = uint32_t(p[i]) << 16 | uint32_t(p[i + 1]) << 8;
        o += a[v >> 18 & 63], o += a[v >> 12 & 63], o += a[v >> 6 & 63], o += '=';
    }
    return o;
}

// RGB pixels to a PNG file in memory (stb_image_write), then to a data: URI.
inline std::string png_data_uri(const std::vector<uint8_t>& rgb, int w, int h, const std::string& what) {
    check(w > 0 && h > 0 && rgb.size() == size_t(w) * size_t(h) * 3,
          "render_html: " + what + ": thumbnail is " + std::to_string(rgb.size()) + " bytes, not " +
              std::to_string(w) + "x" + std::to_string(h) + "x3");
    std::vector<uint8_t> png;
    auto sink = [](void* ctx, void* data, int size) {
        auto* v = static_cast<std::vector<uint8_t>*>(ctx);
        v->insert(v->end(), static_cast<uint8_t*>(data), static_cast<uint8_t*>(data) + size);
    };
    if (!stbi_write_png_to_func(sink, &png, w, h, 3, rgb.data(), w * 3) || png.empty())
        fail("render_html: " + what + ": PNG encoding of the thumbnail failed");
    return "data:image/png;base64," + base64(png.data(), png.size());
}

// Locale-independent fixed-point text ("%.*f" in the C locale).
inline std::string fix(double v, int digits) {
    if (!std::isfinite(v)) return std::isnan(v) ? "–" : (v > 0 ? "∞" : "-∞");
    char buf[400];
    auto r = std::to_chars(buf, buf + sizeof buf, v, std::chars_format::fixed, digits);
    return std::string(buf, r.ptr);
}
// Shortest text that reads back to v ("1e-05", "0.001").
inline std::string shortest(double v) {
    if (!std::isfinite(v)) return fix(v, 0);
    char buf[64];
    auto r = std::to_chars(buf, buf + sizeof buf, v);
    return std::string(buf, r.ptr);
}
inline std::string pct(double v, int digits = 1) { return std::isfinite(v) ? fix(100 * v, digits) + "%" : "–"; }

inline std::string duration(double s) {
    if (!std::isfinite(s) || s < 0) return "–";
    if (s < 60) return fix(s, s < 10 ? 1 : 0) + " s";
    const long t = std::lround(s);
    if (t < 3600) return std::to_string(t / 60) + " min " + std::to_string(t % 60) + " s";
    const long m = t / 60 % 60;
    return std::to_string(t / 3600) + " h " + (m < 10 ? "0" : "") + std::to_string(m) + " min";
}

// Rough width in px of a string in the sans-serif UI font at `size` px: enough to lay out labels.
inline double text_w(const std::string& s, double size) { return double(metrics_detail::py_len(s)) * size * 0.58; }

// Ticks at 1, 2, 2.5 or 5 times a power of ten covering [lo, hi], about `target` of them.
struct Ticks {
    double lo, hi, step;
    int digits;
};
inline Ticks nice_ticks(double lo, double hi, int target = 5) {
    if (!(hi > lo)) hi = lo + (lo == 0 ? 1 : std::abs(lo) * 0.1);
    const double raw = (hi - lo) / target, mag = std::pow(10.0, std::floor(std::log10(raw)));
    double step = 10 * mag;
    for (double m : {1.0, 2.0, 2.5, 5.0})
        if (m * mag >= raw * 0.999) { step = m * mag; break; }
    const double a = std::floor(lo / step + 1e-9) * step, b = std::ceil(hi / step - 1e-9) * step;
    int digits = std::max(0, -int(std::floor(std::log10(step) + 1e-9)));
    if (std::abs(step / std::pow(10.0, -digits) - std::round(step / std::pow(10.0, -digits))) > 1e-6) ++digits;
    return {a, b, step, digits};
}

inline std::string n1(double v) { return fix(v, 1); }  // SVG coordinates

struct Series {
    std::string label, color;
    std::vector<double> y;  // one per history row; NaN: no point
    bool dashed = false;
};
struct Boundary {
    double x;
    std::string label;
};

enum class ChartKind { lines, log_steps, bars };

// A chart over the shared epoch axis: x = 1..n (row position), domain [0.5, n + 0.5].
struct Chart {
    std::string aria, y_label;
    ChartKind kind = ChartKind::lines;
    std::vector<Series> series{};         // bars: each bar takes the colour of the series that has it
    std::vector<Boundary> boundaries{};
    std::vector<std::string> tooltips_x{};  // per row, names the epoch in tooltips
    double y_min_hint = NAN, y_max_hint = NAN;
    int W = 580, H = 300;
};

inline std::string render_chart(const Chart& c) {
    const double ml = 58, mr = 18, mt = 48, mb = 44;
    const double x0 = ml, x1 = c.W - mr, y0 = mt, y1 = c.H - mb;
    size_t n = 0;
    for (const auto& s : c.series) n = std::max(n, s.y.size());
    std::string o = "<svg class=\"chart\" viewBox=\"0 0 " + std::to_string(c.W) + " " + std::to_string(c.H) +
                    "\" role=\"img\" aria-label=\"" + esc(c.aria) + "\" xmlns=\"http://www.w3.org/2000/svg\">";
    // legend, top left
    double lx = x0;
    for (const auto& s : c.series) {
        if (c.kind == ChartKind::bars)
            o += "<rect x=\"" + n1(lx) + "\" y=\"9\" width=\"12\" height=\"10\" rx=\"2\" fill=\"" + s.color + "\"/>";
        else
            o += "<line x1=\"" + n1(lx) + "\" y1=\"14\" x2=\"" + n1(lx + 20) + "\" y2=\"14\" stroke=\"" + s.color +
                 "\" stroke-width=\"2.5\"" + (s.dashed ? " stroke-dasharray=\"6 4\"" : "") + "/>" +
                 "<circle cx=\"" + n1(lx + 10) + "\" cy=\"14\" r=\"3\" fill=\"#fff\" stroke=\"" + s.color +
                 "\" stroke-width=\"2\"/>";
        const double sw = c.kind == ChartKind::bars ? 16 : 26;
        o += "<text x=\"" + n1(lx + sw) + "\" y=\"18\" class=\"legend\">" + esc(s.label) + "</text>";
        lx += sw + text_w(s.label, 12) + 20;
    }
    if (n == 0) {
        o += "<text x=\"" + n1((x0 + x1) / 2) + "\" y=\"" + n1((y0 + y1) / 2) +
             "\" text-anchor=\"middle\" class=\"muted\">no data</text></svg>";
        return o;
    }
    // y domain
    double lo = INFINITY, hi = -INFINITY;
    for (const auto& s : c.series)
        for (double v : s.y)
            if (std::isfinite(v) && (c.kind != ChartKind::log_steps || v > 0)) lo = std::min(lo, v), hi = std::max(hi, v);
    const bool empty = !std::isfinite(lo);
    if (empty) lo = 0, hi = 1;
    std::vector<std::pair<double, std::string>> yt;  // tick value (in domain units), label
    double d0, d1;
    if (c.kind == ChartKind::log_steps) {
        const double a = std::log10(lo), b = std::log10(hi), pad = b - a < 1e-9 ? 0.5 : std::max(0.2, 0.08 * (b - a));
        d0 = a - pad, d1 = b + pad;
        const int e0 = int(std::floor(d0)), e1 = int(std::ceil(d1));
        const bool minors = d1 - d0 < 2.6;
        for (int e = e0; e <= e1; ++e)
            for (int m : {1, 2, 5}) {
                if (m != 1 && !minors) continue;
                const double v = std::log10(double(m)) + e;
                if (v >= d0 - 1e-9 && v <= d1 + 1e-9) yt.push_back({v, std::to_string(m) + "e" + std::to_string(e)});
            }
    } else {
        if (std::isfinite(c.y_min_hint)) lo = std::min(lo, c.y_min_hint);
        if (std::isfinite(c.y_max_hint)) hi = std::max(hi, c.y_max_hint);
        const Ticks t = nice_ticks(lo, hi, 5);
        d0 = t.lo, d1 = t.hi;
        for (double v = t.lo; v <= t.hi + t.step * 1e-6; v += t.step) yt.push_back({v, fix(std::abs(v) < 1e-12 ? 0 : v, t.digits)});
    }
    const double xd0 = 0.5, xd1 = double(n) + 0.5;
    auto X = [&](double x) { return x0 + (x - xd0) / (xd1 - xd0) * (x1 - x0); };
    auto Y = [&](double v) {
        const double d = c.kind == ChartKind::log_steps ? std::log10(v) : v;
        return y1 - (d - d0) / (d1 - d0) * (y1 - y0);
    };
    auto Yd = [&](double d) { return y1 - (d - d0) / (d1 - d0) * (y1 - y0); };
    // phase backgrounds: every other phase lightly tinted
    for (size_t b = 0; b < c.boundaries.size(); ++b) {
        const double xa = X(c.boundaries[b].x), xb = b + 1 < c.boundaries.size() ? X(c.boundaries[b + 1].x) : x1;
        if (b % 2 == 0)
            o += "<rect x=\"" + n1(xa) + "\" y=\"" + n1(y0) + "\" width=\"" + n1(xb - xa) + "\" height=\"" + n1(y1 - y0) +
                 "\" fill=\"#f3f6fb\"/>";
    }
    // grid and y ticks
    for (const auto& [v, label] : yt) {
        const double y = Yd(v);
        o += "<line x1=\"" + n1(x0) + "\" y1=\"" + n1(y) + "\" x2=\"" + n1(x1) + "\" y2=\"" + n1(y) + "\" class=\"grid\"/>";
        o += "<text x=\"" + n1(x0 - 8) + "\" y=\"" + n1(y + 4) + "\" text-anchor=\"end\" class=\"tick\">" + esc(label) + "</text>";
    }
    // x ticks: every epoch, or a nice step when there are many
    int xstep = 1;
    for (int s : {1, 2, 5, 10, 20, 25, 50, 100, 200, 250, 500, 1000})
        if ((x1 - x0) / double(n) * s >= 28) { xstep = s; break; }
    for (size_t i = 1; i <= n; ++i) {
        if (i != 1 && i % size_t(xstep) != 0) continue;
        const double x = X(double(i));
        o += "<line x1=\"" + n1(x) + "\" y1=\"" + n1(y1) + "\" x2=\"" + n1(x) + "\" y2=\"" + n1(y1 + 5) + "\" class=\"axis\"/>";
        o += "<text x=\"" + n1(x) + "\" y=\"" + n1(y1 + 18) + "\" text-anchor=\"middle\" class=\"tick\">" +
             std::to_string(i) + "</text>";
    }
    o += "<line x1=\"" + n1(x0) + "\" y1=\"" + n1(y1) + "\" x2=\"" + n1(x1) + "\" y2=\"" + n1(y1) + "\" class=\"axis\"/>";
    o += "<line x1=\"" + n1(x0) + "\" y1=\"" + n1(y0) + "\" x2=\"" + n1(x0) + "\" y2=\"" + n1(y1) + "\" class=\"axis\"/>";
    o += "<text x=\"" + n1((x0 + x1) / 2) + "\" y=\"" + n1(c.H - 6.0) + "\" text-anchor=\"middle\" class=\"axis-label\">epoch (both phases)</text>";
    o += "<text transform=\"translate(14 " + n1((y0 + y1) / 2) + ") rotate(-90)\" text-anchor=\"middle\" class=\"axis-label\">" +
         esc(c.y_label) + "</text>";
    // phase boundaries: dashed line, label above the plot area
    for (const auto& b : c.boundaries) {
        const double x = X(b.x);
        o += "<line x1=\"" + n1(x) + "\" y1=\"" + n1(y0 - 14) + "\" x2=\"" + n1(x) + "\" y2=\"" + n1(y1) +
             "\" class=\"boundary\"/>";
        const bool right = x + text_w(b.label, 11) + 6 <= c.W;
        o += "<text x=\"" + n1(right ? x + 5 : x - 5) + "\" y=\"" + n1(y0 - 4) + "\" text-anchor=\"" +
             (right ? "start" : "end") + "\" class=\"boundary-label\">" + esc(b.label) + "</text>";
    }
    if (empty) {
        o += "<text x=\"" + n1((x0 + x1) / 2) + "\" y=\"" + n1((y0 + y1) / 2) +
             "\" text-anchor=\"middle\" class=\"muted\">no data</text></svg>";
        return o;
    }
    // data
    if (c.kind == ChartKind::bars) {
        const double bw = std::max(1.0, (x1 - x0) / double(n) * 0.7);
        for (size_t i = 0; i < n; ++i) {
            double v = NAN;
            std::string color = "#94a3b8";
            for (size_t k = 0; k < c.series.size(); ++k)
                if (i < c.series[k].y.size() && std::isfinite(c.series[k].y[i])) v = c.series[k].y[i], color = c.series[k].color;
            if (!std::isfinite(v)) continue;
            const double x = X(double(i + 1)), y = Y(std::max(v, d0)), yb = Y(std::max(0.0, d0));
            o += "<rect x=\"" + n1(x - bw / 2) + "\" y=\"" + n1(std::min(y, yb)) + "\" width=\"" + n1(bw) + "\" height=\"" +
                 n1(std::abs(yb - y)) + "\" rx=\"2\" fill=\"" + color + "\"><title>" +
                 esc((i < c.tooltips_x.size() ? c.tooltips_x[i] : "") + ": " + duration(v)) + "</title></rect>";
        }
    } else {
        for (const auto& s : c.series) {
            // one path, broken where a value is missing
            std::string d;
            bool pen = false;
            for (size_t i = 0; i < s.y.size(); ++i) {
                const double v = s.y[i];
                if (!std::isfinite(v) || (c.kind == ChartKind::log_steps && v <= 0)) { pen = false; continue; }
                const double x = X(double(i + 1)), y = Y(v);
                if (c.kind == ChartKind::log_steps) {
                    d += (pen ? "L" : "M") + n1(x - 0.5 * (X(2) - X(1))) + " " + n1(y) + "L" + n1(x + 0.5 * (X(2) - X(1))) + " " + n1(y);
                } else {
                    d += (pen ? "L" : "M") + n1(x) + " " + n1(y);
                }
                pen = true;
            }
            if (!d.empty())
                o += "<path d=\"" + d + "\" fill=\"none\" stroke=\"" + s.color + "\" stroke-width=\"2.2\" stroke-linejoin=\"round\"" +
                     (s.dashed ? " stroke-dasharray=\"6 4\"" : "") + "/>";
            for (size_t i = 0; i < s.y.size(); ++i) {
                const double v = s.y[i];
                if (!std::isfinite(v) || (c.kind == ChartKind::log_steps && v <= 0)) continue;
                const std::string val = c.kind == ChartKind::log_steps ? shortest(v) : fix(v, 4);
                o += "<circle cx=\"" + n1(X(double(i + 1))) + "\" cy=\"" + n1(Y(v)) + "\" r=\"3.2\" fill=\"#fff\" stroke=\"" +
                     s.color + "\" stroke-width=\"2\"><title>" +
                     esc((i < c.tooltips_x.size() ? c.tooltips_x[i] + " — " : "") + s.label + ": " + val) + "</title></circle>";
            }
        }
    }
    o += "</svg>";
    return o;
}

// Colour for a row-normalised value in [0, 1]: white to deep blue (matplotlib's "Blues" stops).
inline std::string heat(double v) {
    static const double stops[][3] = {{247, 251, 255}, {222, 235, 247}, {198, 219, 239}, {158, 202, 225}, {107, 174, 214},
                                      {66, 146, 198},  {33, 113, 181},  {8, 81, 156},    {8, 48, 107}};
    v = std::clamp(std::isfinite(v) ? v : 0.0, 0.0, 1.0) * 8;
    const int i = std::min(7, int(v));
    const double f = v - i;
    char buf[8];
    std::snprintf(buf, sizeof buf, "#%02x%02x%02x", int(std::lround(stops[i][0] + f * (stops[i + 1][0] - stops[i][0]))),
                  int(std::lround(stops[i][1] + f * (stops[i + 1][1] - stops[i][1]))),
                  int(std::lround(stops[i][2] + f * (stops[i + 1][2] - stops[i][2]))));
    return buf;
}

inline std::string render_confusion(const ClassificationReport& r) {
    const size_t k = r.classes.size();
    if (k == 0 || r.confusion.size() != k) return "<p class=\"muted\">no confusion matrix</p>";
    const double cell = std::clamp(400.0 / double(k), 30.0, 92.0);
    double name_w = 0;
    for (const auto& c : r.classes) name_w = std::max(name_w, text_w(c, 12.5));
    const bool rotate = name_w > cell - 8;
    const double left = 34 + name_w + 12;            // "true" label + row names
    const double top = 26 + (rotate ? name_w * 0.72 + 10 : 22);  // "predicted" label + column names
    const double legend_w = 70;
    const double W = left + cell * double(k) + legend_w, H = top + cell * double(k) + 12;
    std::string o = "<svg class=\"confusion\" viewBox=\"0 0 " + n1(W) + " " + n1(H) + "\" style=\"max-width:" + n1(W) +
                    "px\" role=\"img\" aria-label=\"confusion matrix\" xmlns=\"http://www.w3.org/2000/svg\">";
    const double gx = left + cell * double(k) / 2;
    o += "<text x=\"" + n1(gx) + "\" y=\"14\" text-anchor=\"middle\" class=\"axis-label\">predicted</text>";
    o += "<text transform=\"translate(14 " + n1(top + cell * double(k) / 2) +
         ") rotate(-90)\" text-anchor=\"middle\" class=\"axis-label\">true</text>";
    for (size_t c = 0; c < k; ++c) {
        const double x = left + cell * (double(c) + 0.5);
        if (rotate)
            o += "<text transform=\"translate(" + n1(x + 4) + " " + n1(top - 8) + ") rotate(-45)\" class=\"cm-name\">" +
                 esc(r.classes[c]) + "</text>";
        else
            o += "<text x=\"" + n1(x) + "\" y=\"" + n1(top - 8) + "\" text-anchor=\"middle\" class=\"cm-name\">" +
                 esc(r.classes[c]) + "</text>";
        o += "<text x=\"" + n1(left - 10) + "\" y=\"" + n1(top + cell * (double(c) + 0.5) + 4) +
             "\" text-anchor=\"end\" class=\"cm-name\">" + esc(r.classes[c]) + "</text>";
    }
    const bool two_lines = cell >= 52;
    for (size_t t = 0; t < k; ++t) {
        int64_t row = 0;
        for (size_t p = 0; p < k && p < r.confusion[t].size(); ++p) row += r.confusion[t][p];
        for (size_t p = 0; p < k; ++p) {
            const int64_t v = p < r.confusion[t].size() ? r.confusion[t][p] : 0;
            const double f = row ? double(v) / double(row) : 0.0;
            const double x = left + cell * double(p), y = top + cell * double(t);
            o += "<rect x=\"" + n1(x) + "\" y=\"" + n1(y) + "\" width=\"" + n1(cell) + "\" height=\"" + n1(cell) +
                 "\" fill=\"" + heat(f) + "\" stroke=\"#fff\" stroke-width=\"1.5\"><title>" +
                 esc("true " + r.classes[t] + ", predicted " + r.classes[p] + ": " + std::to_string(v) + " (" +
                     pct(f) + " of the row)") +
                 "</title></rect>";
            const char* ink = f > 0.5 ? "#ffffff" : "#1f2937";
            const double cx = x + cell / 2, cy = y + cell / 2;
            o += std::string("<text x=\"") + n1(cx) + "\" y=\"" + n1(two_lines ? cy + 1 : cy + 4.5) +
                 "\" text-anchor=\"middle\" class=\"cm-count\" fill=\"" + ink + "\">" + std::to_string(v) + "</text>";
            if (two_lines)
                o += std::string("<text x=\"") + n1(cx) + "\" y=\"" + n1(cy + 17) + "\" text-anchor=\"middle\" class=\"cm-pct\" fill=\"" +
                     ink + "\">" + (v > 0 && f < 0.005 ? std::string("&lt;1%") : pct(f, 0)) + "</text>";
        }
    }
    // colour scale
    const double sx = left + cell * double(k) + 22, sh = cell * double(k);
    o += "<defs><linearGradient id=\"cm-scale\" x1=\"0\" y1=\"1\" x2=\"0\" y2=\"0\">";
    for (int i = 0; i <= 8; ++i)
        o += "<stop offset=\"" + fix(i / 8.0, 3) + "\" stop-color=\"" + heat(i / 8.0) + "\"/>";
    o += "</linearGradient></defs>";
    o += "<rect x=\"" + n1(sx) + "\" y=\"" + n1(top) + "\" width=\"12\" height=\"" + n1(sh) +
         "\" fill=\"url(#cm-scale)\" stroke=\"#d1d5db\"/>";
    for (int i = 0; i <= 4; ++i) {
        const double y = top + sh * (1 - i / 4.0);
        o += "<text x=\"" + n1(sx + 17) + "\" y=\"" + n1(y + 4) + "\" class=\"tick\">" + std::to_string(25 * i) + "%</text>";
    }
    o += "</svg>";
    return o;
}

inline std::string render_report_table(const ClassificationReport& r) {
    auto row = [](const std::string& name, const ClassMetrics& m, const std::string& cls) {
        return "<tr" + cls + "><th scope=\"row\">" + esc(name) + "</th><td class=\"num\">" + fix(m.precision, 3) +
               "</td><td class=\"num\">" + fix(m.recall, 3) + "</td><td class=\"num\">" + fix(m.f1, 3) +
               "</td><td class=\"num\">" + std::to_string(m.support) + "</td></tr>";
    };
    std::string o = "<table class=\"report\"><thead><tr><th></th><th class=\"num\">precision</th><th class=\"num\">recall</th>"
                    "<th class=\"num\">f1-score</th><th class=\"num\">support</th></tr></thead><tbody>";
    for (size_t c = 0; c < r.classes.size() && c < r.per_class.size(); ++c) o += row(r.classes[c], r.per_class[c], "");
    o += "<tr class=\"sep\"><th scope=\"row\">accuracy</th><td></td><td></td><td class=\"num\">" + fix(r.accuracy, 3) +
         "</td><td class=\"num\">" + std::to_string(r.n) + "</td></tr>";
    o += row("macro avg", r.macro_avg, "");
    o += row("weighted avg", r.weighted_avg, "");
    o += "</tbody></table>";
    return o;
}

inline std::string basename_of(const std::string& p) {
    const size_t s = p.find_last_of("/\\");
    return s == std::string::npos ? p : p.substr(s + 1);
}

inline std::string render_misclassified(const ReportInput& in) {
    const auto& cls = in.validation.classes;
    const int k = int(cls.size());
    std::string o;
    const size_t shown = std::min(in.misclassified.size(), max_misclassified_shown);
    for (size_t i = 0; i < shown; ++i) {
        const auto& m = in.misclassified[i];
        const std::string what = "misclassified image " + std::to_string(i) + " ('" + m.path + "')";
        check(m.true_class >= 0 && m.true_class < k && m.predicted >= 0 && m.predicted < k,
              "render_html: " + what + ": class index out of range (true " + std::to_string(m.true_class) +
                  ", predicted " + std::to_string(m.predicted) + ", " + std::to_string(k) + " classes)");
        check(m.probs.empty() || m.probs.size() == size_t(k),
              "render_html: " + what + ": " + std::to_string(m.probs.size()) + " probabilities for " + std::to_string(k) +
                  " classes");
        o += "<figure class=\"mis\">";
        if (!m.thumb_rgb.empty())
            o += "<img src=\"" + png_data_uri(m.thumb_rgb, m.thumb_w, m.thumb_h, what) + "\" width=\"" +
                 std::to_string(m.thumb_w) + "\" height=\"" + std::to_string(m.thumb_h) + "\" alt=\"" +
                 esc(basename_of(m.path)) + "\">";
        else
            o += "<div class=\"noimg\">no image</div>";
        o += "<figcaption><div class=\"file\" title=\"" + esc(m.path) + "\">" + esc(basename_of(m.path)) + "</div>";
        o += "<div class=\"labels\"><span class=\"badge true\">true: " + esc(cls[size_t(m.true_class)]) +
             "</span> <span class=\"badge pred\">predicted: " + esc(cls[size_t(m.predicted)]) + "</span></div>";
        if (!m.probs.empty()) {
            o += "<div class=\"bars\">";
            for (int c = 0; c < k; ++c) {
                const double p = std::clamp(std::isfinite(m.probs[size_t(c)]) ? double(m.probs[size_t(c)]) : 0.0, 0.0, 1.0);
                const char* kind = c == m.predicted ? " p" : c == m.true_class ? " t" : "";
                o += std::string("<span class=\"bn") + kind + "\">" + esc(cls[size_t(c)]) +
                     "</span><span class=\"track\"><span class=\"fill" + kind + "\" style=\"width:" + fix(100 * p, 1) +
                     "%\"></span></span><span class=\"bv" + kind + "\">" + pct(m.probs[size_t(c)]) + "</span>";
            }
            o += "</div>";
        }
        o += "</figcaption></figure>";
    }
    return o;
}

inline const char* css() {
    return R"CSS(
:root{--fg:#1f2937;--muted:#6b7280;--line:#e5e7eb;--bg:#f5f6f8;--card:#fff;--accent:#2563eb}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"Noto Sans","Liberation Sans",sans-serif;-webkit-font-smoothing:antialiased}
main{max-width:1200px;margin:0 auto;padding:32px 32px 40px}
header h1{font-size:24px;line-height:1.25;margin:0 0 4px;font-weight:650;letter-spacing:-.01em}
header .sub{color:var(--muted);margin:0}
.stats{display:grid;grid-template-columns:repeat(auto-fit,minmax(160px,1fr));gap:12px;margin-top:20px}
.stat{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:12px 16px}
.stat .k{color:var(--muted);font-size:11.5px;text-transform:uppercase;letter-spacing:.05em}
.stat .v{font-size:22px;font-weight:650;font-variant-numeric:tabular-nums;margin-top:2px}
.stat .d{color:var(--muted);font-size:12px}
.notes{background:#fffbeb;border:1px solid #fde68a;color:#78350f;border-radius:10px;padding:10px 16px;margin:16px 0 0;white-space:pre-wrap}
section{background:var(--card);border:1px solid var(--line);border-radius:12px;padding:20px 24px 22px;margin-top:20px;box-shadow:0 1px 2px rgba(16,24,40,.04)}
section h2{font-size:17px;margin:0 0 4px;font-weight:650}
section .lead{color:var(--muted);margin:0 0 14px;font-size:13px}
.grid2{display:grid;grid-template-columns:1fr 1fr;gap:20px 28px}
.grid2.cm{grid-template-columns:minmax(0,1.1fr) minmax(0,1fr);align-items:start}
@media (max-width:900px){.grid2,.grid2.cm{grid-template-columns:1fr}}
figure{margin:0}
h3{font-size:13.5px;font-weight:600;margin:0 0 2px;color:#374151}
svg{display:block;width:100%;height:auto}
svg text{font-family:inherit}
svg .tick{font-size:11px;fill:#6b7280}
svg .legend{font-size:12px;fill:#374151}
svg .axis-label{font-size:12px;fill:#4b5563;font-weight:600}
svg .grid{stroke:#eceef1;stroke-width:1}
svg .axis{stroke:#9ca3af;stroke-width:1}
svg .boundary{stroke:#6b7280;stroke-width:1.4;stroke-dasharray:5 4}
svg .boundary-label{font-size:11px;fill:#374151;font-weight:600}
svg .muted{fill:#9ca3af;font-size:13px}
svg .cm-name{font-size:12.5px;fill:#374151}
svg .cm-count{font-size:15px;font-weight:650}
svg .cm-pct{font-size:11px;opacity:.85}
table{border-collapse:collapse;width:100%;font-variant-numeric:tabular-nums}
th,td{padding:7px 12px;border-bottom:1px solid var(--line);text-align:left;vertical-align:top}
thead th{font-size:12px;color:var(--muted);font-weight:600;text-transform:uppercase;letter-spacing:.04em;border-bottom:1px solid #d1d5db}
tbody th{font-weight:600}
.num{text-align:right}
tr.sep th,tr.sep td{border-top:2px solid #d1d5db}
table.settings td{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono","Liberation Mono",monospace;font-size:12.5px;word-break:break-word}
table.settings th{width:32%;font-weight:600;color:#374151}
table.settings tr:nth-child(even){background:#fafbfc}
table.history{font-size:12.5px}
details{margin-top:14px}
details summary{cursor:pointer;color:var(--accent);font-weight:600;font-size:13px}
pre{font:12.5px/1.45 ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono","Liberation Mono",monospace;background:#f8fafc;border:1px solid var(--line);border-radius:8px;padding:12px 14px;overflow:auto;margin:10px 0 0}
.mis-grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(340px,1fr));gap:14px}
.mis{display:flex;gap:12px;border:1px solid var(--line);border-radius:10px;padding:10px;background:#fff}
.mis img,.mis .noimg{width:104px;height:104px;object-fit:contain;background:#0b0b0b;border-radius:6px;flex:none}
.mis .noimg{display:flex;align-items:center;justify-content:center;color:#9ca3af;font-size:12px}
.mis figcaption{min-width:0;flex:1}
.mis .file{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,"DejaVu Sans Mono",monospace;color:var(--muted);overflow:hidden;text-overflow:ellipsis;white-space:nowrap}
.labels{margin:4px 0 6px}
.badge{display:inline-block;padding:1px 8px;border-radius:999px;font-size:12px;font-weight:600;margin:0 2px 3px 0}
.badge.true{background:#dcfce7;color:#166534}
.badge.pred{background:#fee2e2;color:#991b1b}
.bars{display:grid;grid-template-columns:minmax(0,max-content) minmax(56px,1fr) max-content;gap:3px 8px;align-items:center;font-size:12px}
.bn{color:#4b5563;white-space:nowrap;overflow:hidden;text-overflow:ellipsis;max-width:96px}
.bn.p{color:#991b1b;font-weight:600}.bn.t{color:#166534;font-weight:600}
.track{height:8px;background:#eef1f5;border-radius:4px;overflow:hidden}
.fill{display:block;height:100%;background:#94a3b8;border-radius:4px}
.fill.p{background:#dc2626}.fill.t{background:#16a34a}
.bv{text-align:right;font-variant-numeric:tabular-nums;color:#4b5563}
.bv.p{color:#991b1b;font-weight:600}.bv.t{color:#166534;font-weight:600}
.muted{color:var(--muted)}
footer{color:var(--muted);font-size:12px;text-align:center;margin-top:24px}
)CSS";
}

}  // namespace report_detail

inline std::string render_html(const ReportInput& in) {
    using namespace report_detail;
    const auto& v = in.validation;

    // history in (phase, epoch) order; x = position
    std::vector<HistoryRow> h = in.history;
    std::stable_sort(h.begin(), h.end(),
                     [](const HistoryRow& a, const HistoryRow& b) { return a.phase != b.phase ? a.phase < b.phase : a.epoch < b.epoch; });
    const size_t n = h.size();
    std::vector<Boundary> bounds;
    std::vector<int> phases;
    std::vector<std::string> tips;
    for (size_t i = 0; i < n; ++i) {
        if (phases.empty() || h[i].phase != phases.back()) {
            phases.push_back(h[i].phase);
            if (i > 0) bounds.push_back({double(i) + 0.5, h[i].phase == 2 ? "phase 2: fine-tuning" : "phase " + std::to_string(h[i].phase)});
        }
        tips.push_back("epoch " + std::to_string(i + 1) + " (phase " + std::to_string(h[i].phase) + ", epoch " +
                       std::to_string(h[i].epoch) + ")");
    }
    auto col = [&](double HistoryRow::*f) {
        std::vector<double> y;
        for (const auto& r : h) y.push_back(r.*f);
        return y;
    };
    const std::string train_c = "#2563eb", val_c = "#ea580c";

    Chart loss{"loss per epoch, training and validation", "loss"};
    loss.series = {{"train loss", train_c, col(&HistoryRow::loss)}, {"validation loss", val_c, col(&HistoryRow::val_loss)}};
    loss.boundaries = bounds, loss.tooltips_x = tips, loss.y_min_hint = 0;
    Chart acc{"accuracy per epoch, training and validation", "accuracy"};
    acc.series = {{"train accuracy", train_c, col(&HistoryRow::accuracy)},
                  {"validation accuracy", val_c, col(&HistoryRow::val_accuracy)}};
    acc.boundaries = bounds, acc.tooltips_x = tips;
    {
        double mx = -INFINITY;
        for (const auto& s : acc.series)
            for (double y : s.y)
                if (std::isfinite(y)) mx = std::max(mx, y);
        if (std::isfinite(mx) && mx <= 1) acc.y_max_hint = 1;
    }
    Chart lr{"learning rate per epoch (log scale)", "learning rate (log)", ChartKind::log_steps};
    lr.series = {{"learning rate", "#7c3aed", col(&HistoryRow::lr)}};
    lr.boundaries = bounds, lr.tooltips_x = tips, lr.H = 260;
    Chart secs{"seconds per epoch", "seconds", ChartKind::bars};
    {
        const std::vector<std::string> colors = {"#93c5fd", "#2563eb", "#1e3a8a", "#60a5fa"};
        for (size_t p = 0; p < phases.size(); ++p) {
            Series s{"phase " + std::to_string(phases[p]), colors[p % colors.size()], std::vector<double>(n, NAN)};
            for (size_t i = 0; i < n; ++i)
                if (h[i].phase == phases[p]) s.y[i] = h[i].seconds;
            secs.series.push_back(std::move(s));
        }
    }
    secs.boundaries = bounds, secs.tooltips_x = tips, secs.H = 260, secs.y_min_hint = 0;

    // headline numbers
    double best = -INFINITY, total_s = 0;
    size_t best_i = 0;
    bool any_s = false;
    for (size_t i = 0; i < n; ++i) {
        if (std::isfinite(h[i].val_accuracy) && h[i].val_accuracy > best) best = h[i].val_accuracy, best_i = i;
        if (std::isfinite(h[i].seconds)) total_s += h[i].seconds, any_s = true;
    }
    std::string epochs_text;
    for (size_t p = 0; p < phases.size(); ++p) {
        size_t cnt = 0;
        for (const auto& r : h) cnt += r.phase == phases[p];
        epochs_text += (p ? " + " : "") + std::to_string(cnt);
    }
    int64_t errors = v.n;
    for (size_t c = 0; c < v.confusion.size(); ++c) errors -= c < v.confusion[c].size() ? v.confusion[c][c] : 0;

    std::string o;
    o.reserve(1 << 20);
    o += "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
         "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
         "<meta name=\"generator\" content=\"tlcpu\">\n<title>" +
         esc(in.title) + "</title>\n<style>" + css() + "</style>\n</head>\n<body>\n<main>\n";
    o += "<header><h1>" + esc(in.title) + "</h1><p class=\"sub\">Training report · " + std::to_string(n) +
         " epochs over " + std::to_string(phases.size()) + (phases.size() == 1 ? " phase" : " phases") +
         " · validation split of " + std::to_string(v.n) + " images, " + std::to_string(v.classes.size()) +
         " classes</p>";
    auto stat = [](const std::string& k, const std::string& val, const std::string& d) {
        return "<div class=\"stat\"><div class=\"k\">" + esc(k) + "</div><div class=\"v\">" + esc(val) +
               "</div><div class=\"d\">" + esc(d) + "</div></div>";
    };
    o += "<div class=\"stats\">";
    o += stat("validation accuracy", v.n ? pct(v.accuracy) : "–", std::to_string(v.n - errors) + " of " + std::to_string(v.n) + " correct");
    o += stat("macro F1", v.n ? fix(v.macro_avg.f1, 3) : "–", "weighted F1 " + (v.n ? fix(v.weighted_avg.f1, 3) : "–"));
    o += stat("best val accuracy", std::isfinite(best) ? pct(best) : "–",
              std::isfinite(best) ? "at epoch " + std::to_string(best_i + 1) + " (phase " + std::to_string(h[best_i].phase) + ")" : "not recorded");
    o += stat("epochs", n ? epochs_text : "0", phases.size() > 1 ? "per phase" : "");
    o += stat("training time", any_s ? duration(total_s) : "–", n && any_s ? duration(total_s / double(n)) + " per epoch" : "");
    o += "</div>";
    if (!in.notes.empty()) o += "<p class=\"notes\">" + esc(in.notes) + "</p>";
    o += "</header>\n";

    // training curves
    o += "<section><h2>Training curves</h2><p class=\"lead\">Both phases on one epoch axis; the dashed line marks where "
         "the next phase starts. Hover a point for its value.</p>";
    o += "<div class=\"grid2\"><figure><h3>Loss</h3>" + render_chart(loss) + "</figure><figure><h3>Accuracy</h3>" +
         render_chart(acc) + "</figure><figure><h3>Learning rate (log scale)</h3>" + render_chart(lr) +
         "</figure><figure><h3>Time per epoch</h3>" + render_chart(secs) + "</figure></div>";
    if (n) {
        o += "<details><summary>Per-epoch values</summary><table class=\"history\"><thead><tr><th class=\"num\">#</th>"
             "<th class=\"num\">phase</th><th class=\"num\">epoch</th><th class=\"num\">loss</th><th class=\"num\">accuracy</th>"
             "<th class=\"num\">val loss</th><th class=\"num\">val accuracy</th><th class=\"num\">learning rate</th>"
             "<th class=\"num\">seconds</th></tr></thead><tbody>";
        for (size_t i = 0; i < n; ++i) {
            const auto& r = h[i];
            o += "<tr><td class=\"num\">" + std::to_string(i + 1) + "</td><td class=\"num\">" + std::to_string(r.phase) +
                 "</td><td class=\"num\">" + std::to_string(r.epoch) + "</td><td class=\"num\">" + fix(r.loss, 4) +
                 "</td><td class=\"num\">" + fix(r.accuracy, 4) + "</td><td class=\"num\">" + fix(r.val_loss, 4) +
                 "</td><td class=\"num\">" + fix(r.val_accuracy, 4) + "</td><td class=\"num\">" + esc(shortest(r.lr)) +
                 "</td><td class=\"num\">" + fix(r.seconds, 1) + "</td></tr>";
        }
        o += "</tbody></table></details>";
    }
    o += "</section>\n";

    // validation
    o += "<section><h2>Validation</h2><p class=\"lead\">" + std::to_string(v.n) +
         " images. Cells are coloured by the share of their row (the true class), so the diagonal is each class's "
         "recall.</p><div class=\"grid2 cm\"><figure><h3>Confusion matrix</h3>" +
         render_confusion(v) + "</figure><figure><h3>Classification report</h3>" + render_report_table(v);
    if (!v.classes.empty() && v.n > 0)
        o += "<details><summary>As text (scikit-learn layout)</summary><pre>" + esc(v.text()) + "</pre></details>";
    o += "</figure></div></section>\n";

    // misclassified
    const size_t shown = std::min(in.misclassified.size(), max_misclassified_shown);
    o += "<section><h2>Misclassified validation images</h2><p class=\"lead\">";
    if (in.misclassified.empty())
        o += errors > 0 ? std::to_string(errors) + " validation images were misclassified; none were passed to the report."
                        : "None.";
    else
        o += std::to_string(shown) + " of " + std::to_string(std::max<int64_t>(errors, int64_t(in.misclassified.size()))) +
             " shown, with the predicted probability of every class (<span class=\"badge true\">true</span> "
             "<span class=\"badge pred\">predicted</span>).";
    o += "</p>";
    if (shown) o += "<div class=\"mis-grid\">" + render_misclassified(in) + "</div>";
    o += "</section>\n";

    // settings
    o += "<section><h2>Settings</h2>";
    if (in.settings.empty())
        o += "<p class=\"muted\">none recorded</p>";
    else {
        o += "<table class=\"settings\"><tbody>";
        for (const auto& [k, val] : in.settings) o += "<tr><th scope=\"row\">" + esc(k) + "</th><td>" + esc(val) + "</td></tr>";
        o += "</tbody></table>";
    }
    o += "</section>\n";
    o += "<footer>Generated by tlcpu · a self-contained file: no scripts, no network access</footer>\n</main>\n</body>\n</html>\n";
    return o;
}

// Written to "<path>.tmp-<pid>", synced and renamed over path: a crash leaves the old report or
// the new one, never half of one. Failures are an Error naming the path.
inline void write_html(const std::string& path, const ReportInput& in) {
    const std::string html = render_html(in);
    write_atomically(path, [&](FILE* f) { return std::fwrite(html.data(), 1, html.size(), f) == html.size(); });
}

}  // namespace tlcpu

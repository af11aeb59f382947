// tlcpu: auditing an image data set for duplicates and leakage.
//
// Every file is decoded once (stb, format detected from the bytes, not the name) and
// reduced to a few numbers: its size, the channel count stored in the file, whether its
// pixels are effectively gray, an exact key (a 128-bit hash of the decoded RGB pixels and
// the dimensions) and a 64-bit perceptual hash. From these the audit finds
//   * exact duplicate groups: identical decoded pixels, so byte-identical files and
//     re-encodings that decode to the same pixels (a PNG and a lossless copy, a JPEG with
//     its EXIF stripped) both match;
//   * near-duplicate pairs: perceptual hashes within a Hamming distance (the candidates),
//     confirmed by comparing small normalised thumbnails, excluding pairs that are
//     already exact;
//   * label conflicts: a duplicate pair (exact or near) whose class names differ;
// within each of (up to) two folders and across them, e.g. a training and a test split.
//
// Unreadable files are collected with a reason, never fatal. Decoding runs in parallel
// with OpenMP; every result lands by index and every list is sorted, so the report does
// not depend on the thread count.
#pragma once
#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <compare>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <map>
#include <numbers>
#include <numeric>
#include <string>
#include <utility>
#include <vector>

#include <stb_image.h>

#include "tlcpu/core/error.hpp"

namespace tlcpu::data {

// ---------------------------------------------------------------------------------------
// Hashes of decoded pixels
// ---------------------------------------------------------------------------------------
namespace imagehash {

struct Key128 {
    uint64_t hi = 0, lo = 0;
    friend bool operator==(const Key128&, const Key128&) = default;
    friend auto operator<=>(const Key128&, const Key128&) = default;
};

inline std::string hex(uint64_t v) {
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(v));
    return buf;
}
inline std::string hex(const Key128& k) { return hex(k.hi) + hex(k.lo); }

inline int hamming(uint64_t a, uint64_t b) { return std::popcount(a ^ b); }

namespace detail {
inline uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
inline uint64_t fmix(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ull;
    k ^= k >> 33;
    return k;
}
inline uint64_t load64(const uint8_t* p) {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= uint64_t(p[i]) << (8 * i);  // little-endian on any host
    return v;
}
}  // namespace detail

// Exact key: MurmurHash3 x64-128 over the RGB bytes, with the width and height mixed into
// its two lanes' initial state and the length into its finalisation, so the same bytes in a
// 2x8 and an 8x2 image differ. Equal pixels always give equal keys; a false match between
// different images has probability ~2^-128 per pair.
inline Key128 pixel_key(const uint8_t* rgb, int width, int height) {
    using namespace detail;
    const size_t len = size_t(width) * size_t(height) * 3;
    constexpr uint64_t c1 = 0x87c37b91114253d5ull, c2 = 0x4cf5ad432745937full;
    uint64_t h1 = fmix(0x7f4a7c15ull ^ uint64_t(uint32_t(width))),
             h2 = fmix(0x94d049bbull ^ (uint64_t(uint32_t(height)) << 1));
    const size_t nblocks = len / 16;
    for (size_t i = 0; i < nblocks; ++i) {
        uint64_t k1 = load64(rgb + 16 * i), k2 = load64(rgb + 16 * i + 8);
        k1 *= c1, k1 = rotl(k1, 31), k1 *= c2, h1 ^= k1;
        h1 = rotl(h1, 27), h1 += h2, h1 = h1 * 5 + 0x52dce729;
        k2 *= c2, k2 = rotl(k2, 33), k2 *= c1, h2 ^= k2;
        h2 = rotl(h2, 31), h2 += h1, h2 = h2 * 5 + 0x38495ab5;
    }
    uint8_t tail[16] = {};
    std::copy(rgb + 16 * nblocks, rgb + len, tail);
    uint64_t k1 = load64(tail), k2 = load64(tail + 8);
    k2 *= c2, k2 = rotl(k2, 33), k2 *= c1, h2 ^= k2;
    k1 *= c1, k1 = rotl(k1, 31), k1 *= c2, h1 ^= k1;
    h1 ^= uint64_t(len), h2 ^= uint64_t(len);
    h1 += h2, h2 += h1;
    h1 = fmix(h1), h2 = fmix(h2);
    h1 += h2, h2 += h1;
    return {h1, h2};
}

// Luma (BT.601) of an RGB image, area-averaged onto an out_w x out_h grid. Each output cell
// is the exact, overlap-weighted mean of the source pixels it covers, so the result barely
// moves when the source is resized by a few percent (the cells cover the same part of the
// scene) and is independent of the thread count (plain double sums in a fixed order).
inline std::vector<double> gray_area_resize(const uint8_t* rgb, int width, int height, int out_w, int out_h) {
    auto spans = [](int src, int n) {
        // for output j: the source indices it overlaps, weighted by overlap / cell length
        std::vector<std::vector<std::pair<int, double>>> s(static_cast<size_t>(n));
        const double scale = double(src) / n;
        for (int j = 0; j < n; ++j) {
            const double a = j * scale, b = (j + 1) * scale;
            for (int k = int(std::floor(a)); k < int(std::ceil(b)) && k < src; ++k) {
                const double w = std::min(b, double(k + 1)) - std::max(a, double(k));
                if (w > 0) s[size_t(j)].push_back({k, w / scale});
            }
        }
        return s;
    };
    const auto sx = spans(width, out_w), sy = spans(height, out_h);
    const size_t ow = static_cast<size_t>(out_w);
    std::vector<double> rows(size_t(height) * ow);  // each source row reduced to out_w columns
    std::vector<double> luma(static_cast<size_t>(width));
    for (int y = 0; y < height; ++y) {
        const uint8_t* p = rgb + size_t(y) * size_t(width) * 3;
        for (int x = 0; x < width; ++x)
            luma[size_t(x)] = 0.299 * p[3 * x] + 0.587 * p[3 * x + 1] + 0.114 * p[3 * x + 2];
        for (size_t j = 0; j < ow; ++j) {
            double s = 0;
            for (auto [k, w] : sx[j]) s += w * luma[size_t(k)];
            rows[size_t(y) * ow + j] = s;
        }
    }
    std::vector<double> out(size_t(out_h) * ow, 0.0);
    for (int i = 0; i < out_h; ++i)
        for (auto [k, w] : sy[size_t(i)])
            for (size_t j = 0; j < ow; ++j) out[size_t(i) * ow + j] += w * rows[size_t(k) * ow + j];
    return out;
}

// Perceptual hash: the 64-bit DCT pHash (as in the `imagehash` Python package) of a 32x32
// luma grid (gray_area_resize): 2-D DCT-II, the 8x8 lowest frequencies, bit (u*8+v) set
// when coefficient (u, v) exceeds their median. Unless the image is flat (or coefficients
// tie), exactly half the bits are set, so distances between two hashes are even.
//
// Why pHash and not dHash (9x8 neighbour differences), measured on 204 real Training images
// (stb re-encode, stb resize): both survive JPEG q75..q95 and a 0.9x..1.1x resize (pHash
// moved by at most 2 bits, dHash by at most 4), but among 20,706 pairs of distinct images
// 6 fall within 6 bits for pHash and 81 for dHash. MRI slices are a bright ellipse on black;
// dHash's bits compare neighbouring cells, half of them in the flat background or the
// uniform interior, so unrelated scans agree on most of them. pHash's bits are the signs of
// the lowest frequencies relative to their median: what JPEG quantisation (it discards high
// frequencies first) and a few percent of scaling (the area average to 32x32 removes it)
// leave alone.
//
// Why a second check: even pHash puts unrelated scans of the same silhouette 2-4 bits
// apart here (an axial T1 and a CT, a coronal and a sagittal slice; 22 cross-class pairs
// at <= 4 bits in Training, none of them the same scan). So a pHash match is only a
// candidate, confirmed by thumb_rms below.
inline uint64_t phash64(const std::vector<double>& grid32) {
    constexpr int N = 32, K = 8;
    check(grid32.size() == size_t(N * N), "phash64: expected a 32x32 grid");
    static const std::array<double, K * N> cosines = [] {
        std::array<double, K * N> c{};
        for (int u = 0; u < K; ++u)
            for (int x = 0; x < N; ++x) c[size_t(u * N + x)] = std::cos(std::numbers::pi * (2 * x + 1) * u / (2.0 * N));
        return c;
    }();
    const std::vector<double>& f = grid32;
    std::array<double, K * N> t{};  // t[u][x] = sum_y cos_u(y) f[y][x]
    for (int u = 0; u < K; ++u)
        for (int y = 0; y < N; ++y) {
            const double c = cosines[size_t(u * N + y)];
            for (int x = 0; x < N; ++x) t[size_t(u * N + x)] += c * f[size_t(y * N + x)];
        }
    std::array<double, K * K> d{};
    for (int u = 0; u < K; ++u)
        for (int v = 0; v < K; ++v) {
            double s = 0;
            for (int x = 0; x < N; ++x) s += cosines[size_t(v * N + x)] * t[size_t(u * N + x)];
            d[size_t(u * K + v)] = s;
        }
    std::array<double, K * K> sorted = d;
    std::sort(sorted.begin(), sorted.end());
    const double median = 0.5 * (sorted[K * K / 2 - 1] + sorted[K * K / 2]);
    uint64_t h = 0;
    for (int i = 0; i < K * K; ++i)
        if (d[size_t(i)] > median) h |= uint64_t(1) << i;
    return h;
}

inline uint64_t phash64(const uint8_t* rgb, int width, int height) {
    return phash64(gray_area_resize(rgb, width, height, 32, 32));
}

// The 32x32 luma grid standardised to mean 0 and standard deviation 1 (all zeros for a
// flat image): the thumbnail that confirms a pHash candidate.
inline std::vector<float> thumbnail(const std::vector<double>& grid32) {
    double mean = 0, var = 0;
    for (double v : grid32) mean += v;
    mean /= double(grid32.size());
    for (double v : grid32) var += (v - mean) * (v - mean);
    const double sd = std::sqrt(var / double(grid32.size()));
    std::vector<float> t(grid32.size());
    for (size_t i = 0; i < t.size(); ++i) t[i] = sd > 1e-6 ? float((grid32[i] - mean) / sd) : 0.f;
    return t;
}

// Root-mean-square difference of two standardised thumbnails: sqrt(2 (1 - correlation)),
// 0 for the same picture, ~1.4 for unrelated ones, at most 2. Insensitive to a global
// brightness/contrast change. Measured on 300 real Training images: re-encoding at JPEG
// q75 gives <= 0.011, resizing by 0.9x..1.1x <= 0.034; of the Training pairs within 8 pHash
// bits, every cross-class one (1,293) is above 0.3; the pairs we looked at below 0.1 were
// one scan re-encoded, resized or re-windowed, those between 0.1 and 0.2 mostly
// neighbouring slices of one patient (related, but not duplicates).
inline double thumb_rms(const std::vector<float>& a, const std::vector<float>& b) {
    if (a.size() != b.size() || a.empty()) return 2.0;
    double s = 0;
    for (size_t i = 0; i < a.size(); ++i) s += double(a[i] - b[i]) * double(a[i] - b[i]);
    return std::sqrt(s / double(a.size()));
}

}  // namespace imagehash

// ---------------------------------------------------------------------------------------
// One file
// ---------------------------------------------------------------------------------------

// What the audit knows about one file.
struct AuditImage {
    bool ok = false;
    std::string error;     // why it could not be read, when !ok
    std::string format;    // from the bytes: "jpeg", "png", "bmp", "gif", "other"
    int width = 0, height = 0;
    int channels = 0;      // as stored in the file: 1 gray, 2 gray+alpha, 3 colour (RGB/YCbCr), 4 RGBA/CMYK
    bool gray_pixels = false;  // every decoded pixel has R == G == B (a colour-encoded file can be gray)
    imagehash::Key128 key;     // exact key of the decoded RGB pixels and the size
    uint64_t phash = 0;        // 64-bit DCT perceptual hash
    std::vector<float> thumb;  // standardised 32x32 luma, to confirm pHash candidates
    // Stored as gray (1 or 2 channels); a 3-channel YCbCr JPEG of a gray scan is not.
    bool gray_encoded() const { return channels == 1 || channels == 2; }
};

inline std::string sniff_format(const std::vector<unsigned char>& b) {
    auto starts = [&](std::initializer_list<unsigned char> m) {
        return b.size() >= m.size() && std::equal(m.begin(), m.end(), b.begin());
    };
    if (starts({0xFF, 0xD8, 0xFF})) return "jpeg";
    if (starts({0x89, 'P', 'N', 'G', 0x0D, 0x0A, 0x1A, 0x0A})) return "png";
    if (starts({'B', 'M'})) return "bmp";
    if (starts({'G', 'I', 'F', '8'})) return "gif";
    return "other";
}

// Everything but the decoding: for pixels already in memory (tests use it directly).
inline AuditImage analyse_pixels(const uint8_t* rgb, int width, int height, int file_channels) {
    AuditImage r;
    r.ok = true;
    r.width = width, r.height = height, r.channels = file_channels;
    const size_t n = size_t(width) * size_t(height);
    bool gray = true;
    for (size_t i = 0; i < n && gray; ++i) gray = rgb[3 * i] == rgb[3 * i + 1] && rgb[3 * i] == rgb[3 * i + 2];
    r.gray_pixels = gray;
    r.key = imagehash::pixel_key(rgb, width, height);
    const std::vector<double> grid = imagehash::gray_area_resize(rgb, width, height, 32, 32);
    r.phash = imagehash::phash64(grid);
    r.thumb = imagehash::thumbnail(grid);
    return r;
}

// Decodes one file and analyses it; never throws for a bad file (the reason is recorded).
inline AuditImage analyse_file(const std::string& path) {
    AuditImage r;
    std::ifstream in(path, std::ios::binary);
    if (!in) {
        r.error = "cannot open the file";
        return r;
    }
    std::vector<unsigned char> bytes((std::istreambuf_iterator<char>(in)), {});
    if (bytes.empty()) {
        r.error = "the file is empty";
        return r;
    }
    const std::string format = sniff_format(bytes);
    if (bytes.size() > size_t(INT32_MAX)) {
        r.error = "the file is larger than 2 GiB";
        return r;
    }
    int w = 0, h = 0, c = 0;
    // Forcing 3 components converts gray, gray+alpha and RGBA to RGB; c is the file's own count.
    unsigned char* px = stbi_load_from_memory(bytes.data(), int(bytes.size()), &w, &h, &c, 3);
    if (!px) {
        r.format = format;
        r.error = std::string("not a decodable image (") + stbi_failure_reason() + ")";
        return r;
    }
    r = analyse_pixels(px, w, h, c);
    stbi_image_free(px);
    r.format = format;
    return r;
}

// ---------------------------------------------------------------------------------------
// The audit
// ---------------------------------------------------------------------------------------

struct AuditEntry {
    std::string path;  // where to read it
    std::string name;  // how reports name it, e.g. "Training/glioma/Tr-gl_0001.jpg"
    std::string cls;   // class (label) name; conflicts compare names, so two folders may list classes differently
    int folder = 0;    // 0 or 1
};

struct AuditOptions {
    int threshold = 6;       // near-duplicate candidate: pHash Hamming distance <= threshold (of 64 bits)
    double max_rms = 0.10;   // ...confirmed when imagehash::thumb_rms <= max_rms (2 or more: no check)
};

// Identical decoded pixels. Members are entry indices in report order (folder, then name),
// so the first member is the one to keep.
struct AuditGroup {
    imagehash::Key128 key;
    std::vector<size_t> members;
    bool cross_folder = false;  // members in both folders
    bool conflict = false;      // members with different class names
};

struct AuditPair {
    enum class Kind { exact, near };
    Kind kind = Kind::exact;
    int distance = 0;  // pHash Hamming distance (0 for exact pairs)
    double rms = 0;    // thumbnail difference (imagehash::thumb_rms; 0 for exact pairs)
    size_t a = 0, b = 0;  // entry indices, a < b (so a's folder <= b's folder)
    bool conflict = false;  // classes differ
};

inline const char* to_string(AuditPair::Kind k) { return k == AuditPair::Kind::exact ? "exact" : "near"; }

// Counts for one class of one folder.
struct AuditClassCounts {
    size_t files = 0, unreadable = 0;
    size_t redundant = 0;       // exact copies beyond the first in this folder (what a de-dup would drop)
    size_t near_within = 0;     // files with a near duplicate in the same folder (not counting exact copies)
    size_t exact_cross = 0;     // files with an exact copy in the other folder
    size_t near_cross = 0;      // files with a near (not exact) duplicate in the other folder
    size_t conflicts = 0;       // files in a duplicate pair (exact or near) whose classes differ
};

struct AuditReport {
    AuditOptions options;
    int folders = 1;
    std::vector<AuditEntry> entries;  // sorted by (folder, name)
    std::vector<AuditImage> images;   // parallel to entries
    std::vector<size_t> unreadable;   // entry indices
    std::vector<AuditGroup> groups;   // exact groups, sorted by first member
    std::vector<AuditPair> pairs;     // exact pairs (every pair inside a group), then near pairs; each by (a, b)
    // per folder: exact groups with >= 2 members in it and the redundant copies in it
    std::array<size_t, 2> groups_within{}, redundant_within{};
    std::array<size_t, 2> near_pairs_within{};
    size_t groups_cross = 0, near_pairs_cross = 0;
    size_t near_candidates = 0;  // pHash within the threshold, not exact (confirmed or not)
    size_t near_pairs_distinct = 0;  // near pairs left when every exact group is cut to its first file
    std::array<size_t, 65> near_by_distance{}, candidates_by_distance{};
    size_t conflict_groups = 0, conflict_pairs_exact = 0, conflict_pairs_near = 0;
    std::map<std::pair<int, std::string>, AuditClassCounts> per_class;  // (folder, class)
    // Near-duplicate components: exact groups and near pairs joined transitively (size >= 2).
    std::vector<std::vector<size_t>> near_components;
};

namespace audit_detail {
struct UnionFind {
    std::vector<size_t> p;
    explicit UnionFind(size_t n) : p(n) { std::iota(p.begin(), p.end(), size_t(0)); }
    size_t find(size_t x) {
        while (p[x] != x) x = p[x] = p[p[x]];
        return x;
    }
    void join(size_t a, size_t b) {
        a = find(a), b = find(b);
        if (a != b) p[std::max(a, b)] = std::min(a, b);  // smallest index is the root: order-independent
    }
};
}  // namespace audit_detail

// Groups and pairs from already analysed images (no I/O); `images` parallel to `entries`.
inline AuditReport audit_analysed(std::vector<AuditEntry> entries, std::vector<AuditImage> images,
                                  const AuditOptions& opt = {}) {
    check(entries.size() == images.size(), "audit: entries and images differ in number");
    check(opt.threshold >= 0 && opt.threshold <= 64,
          "audit: the near-duplicate threshold must be within 0..64, not " + std::to_string(opt.threshold));
    check(opt.max_rms >= 0, "audit: the thumbnail difference bound must not be negative");
    AuditReport r;
    r.options = opt;
    {  // canonical order: (folder, name), whatever order the caller listed the files in
        std::vector<size_t> order(entries.size());
        std::iota(order.begin(), order.end(), size_t(0));
        std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
            if (entries[a].folder != entries[b].folder) return entries[a].folder < entries[b].folder;
            if (entries[a].name != entries[b].name) return entries[a].name < entries[b].name;
            return entries[a].path < entries[b].path;
        });
        r.entries.reserve(order.size());
        r.images.reserve(order.size());
        for (size_t i : order) {
            check(entries[i].folder == 0 || entries[i].folder == 1,
                  "audit: " + entries[i].path + ": folder id must be 0 or 1");
            r.entries.push_back(std::move(entries[i]));
            r.images.push_back(std::move(images[i]));
        }
    }
    const size_t n = r.entries.size();
    for (const auto& e : r.entries) r.folders = std::max(r.folders, e.folder + 1);
    std::vector<size_t> ok;
    for (size_t i = 0; i < n; ++i) {
        auto& cc = r.per_class[{r.entries[i].folder, r.entries[i].cls}];
        ++cc.files;
        if (r.images[i].ok)
            ok.push_back(i);
        else
            ++cc.unreadable, r.unreadable.push_back(i);
    }
    auto differ = [&](size_t a, size_t b) { return r.entries[a].cls != r.entries[b].cls; };
    auto folder = [&](size_t i) { return r.entries[i].folder; };

    // Exact groups: sort the readable files by key (ties by index, so members stay in order).
    {
        std::vector<size_t> by_key = ok;
        std::stable_sort(by_key.begin(), by_key.end(),
                         [&](size_t a, size_t b) { return r.images[a].key < r.images[b].key; });
        for (size_t s = 0; s < by_key.size();) {
            size_t e = s + 1;
            while (e < by_key.size() && r.images[by_key[e]].key == r.images[by_key[s]].key) ++e;
            if (e - s >= 2) {
                AuditGroup g;
                g.key = r.images[by_key[s]].key;
                g.members.assign(by_key.begin() + std::ptrdiff_t(s), by_key.begin() + std::ptrdiff_t(e));
                std::sort(g.members.begin(), g.members.end());
                for (size_t m : g.members) {
                    g.cross_folder |= folder(m) != folder(g.members[0]);
                    g.conflict |= differ(m, g.members[0]);
                }
                r.groups.push_back(std::move(g));
            }
            s = e;
        }
        std::sort(r.groups.begin(), r.groups.end(),
                  [](const AuditGroup& a, const AuditGroup& b) { return a.members[0] < b.members[0]; });
    }
    for (const auto& g : r.groups) {
        std::array<size_t, 2> in{};
        for (size_t m : g.members) ++in[size_t(folder(m))];
        for (int f = 0; f < 2; ++f)
            if (in[size_t(f)] >= 2) ++r.groups_within[size_t(f)], r.redundant_within[size_t(f)] += in[size_t(f)] - 1;
        r.groups_cross += g.cross_folder;
        r.conflict_groups += g.conflict;
        std::array<bool, 2> seen{};
        for (size_t m : g.members) {
            auto& cc = r.per_class[{folder(m), r.entries[m].cls}];
            if (seen[size_t(folder(m))]) ++cc.redundant;  // not the first of this group in this folder
            seen[size_t(folder(m))] = true;
        }
        for (size_t x = 0; x < g.members.size(); ++x)
            for (size_t y = x + 1; y < g.members.size(); ++y) {
                const size_t a = g.members[x], b = g.members[y];
                r.pairs.push_back({AuditPair::Kind::exact, 0, 0.0, a, b, differ(a, b)});
            }
    }

    // Near pairs: all-pairs popcount. 5.7k files are 16M XOR+popcounts, a few tens of
    // milliseconds, so there is no need for multi-index hashing. Each candidate is then
    // confirmed by its thumbnails. Rows run in parallel into their own lists, concatenated
    // in row order.
    {
        const size_t m = ok.size();
        std::vector<uint64_t> h(m);
        for (size_t i = 0; i < m; ++i) h[i] = r.images[ok[i]].phash;
        std::vector<std::vector<AuditPair>> rows(m);
        std::vector<std::array<size_t, 65>> cand(m);
#pragma omp parallel for schedule(dynamic, 64)
        for (std::ptrdiff_t ii = 0; ii < std::ptrdiff_t(m); ++ii) {
            const size_t i = size_t(ii);
            cand[i].fill(0);
            for (size_t j = i + 1; j < m; ++j) {
                const int d = imagehash::hamming(h[i], h[j]);
                if (d > opt.threshold) continue;
                const AuditImage &x = r.images[ok[i]], &y = r.images[ok[j]];
                if (x.key == y.key) continue;
                ++cand[i][size_t(d)];
                const double rms = imagehash::thumb_rms(x.thumb, y.thumb);
                if (opt.max_rms >= 2.0 || rms <= opt.max_rms)
                    rows[i].push_back({AuditPair::Kind::near, d, rms, ok[i], ok[j], differ(ok[i], ok[j])});
            }
        }
        for (size_t i = 0; i < m; ++i) {
            r.pairs.insert(r.pairs.end(), rows[i].begin(), rows[i].end());
            for (size_t d = 0; d < 65; ++d) r.candidates_by_distance[d] += cand[i][d], r.near_candidates += cand[i][d];
        }
    }
    std::stable_sort(r.pairs.begin(), r.pairs.end(), [](const AuditPair& x, const AuditPair& y) {
        if (x.kind != y.kind) return x.kind == AuditPair::Kind::exact;
        return std::pair(x.a, x.b) < std::pair(y.a, y.b);
    });

    // Per-file flags from the pairs.
    std::vector<uint8_t> near_within(n), exact_cross(n), near_cross(n), conflict(n), copy(n);
    for (const auto& g : r.groups)
        for (size_t k = 1; k < g.members.size(); ++k) copy[g.members[k]] = 1;
    for (const auto& p : r.pairs) {
        const bool cross = folder(p.a) != folder(p.b);
        if (p.kind == AuditPair::Kind::exact) {
            if (cross) exact_cross[p.a] = exact_cross[p.b] = 1;
            r.conflict_pairs_exact += p.conflict;
        } else {
            if (cross)
                near_cross[p.a] = near_cross[p.b] = 1, ++r.near_pairs_cross;
            else
                near_within[p.a] = near_within[p.b] = 1, ++r.near_pairs_within[size_t(folder(p.a))];
            r.conflict_pairs_near += p.conflict;
            ++r.near_by_distance[size_t(p.distance)];
            r.near_pairs_distinct += !copy[p.a] && !copy[p.b];
        }
        if (p.conflict) conflict[p.a] = conflict[p.b] = 1;
    }
    for (size_t i = 0; i < n; ++i) {
        auto& cc = r.per_class[{folder(i), r.entries[i].cls}];
        cc.near_within += near_within[i];
        cc.exact_cross += exact_cross[i];
        cc.near_cross += near_cross[i];
        cc.conflicts += conflict[i];
    }

    // Near components (exact and near edges together), each sorted, listed by first member.
    {
        audit_detail::UnionFind uf(n);
        for (const auto& p : r.pairs) uf.join(p.a, p.b);
        std::map<size_t, std::vector<size_t>> comp;
        for (size_t i = 0; i < n; ++i) comp[uf.find(i)].push_back(i);
        for (auto& [root, members] : comp)
            if (members.size() >= 2) r.near_components.push_back(std::move(members));
    }
    return r;
}

// Decodes every file once (in parallel; results by index) and audits them.
inline AuditReport audit_images(std::vector<AuditEntry> entries, const AuditOptions& opt = {}) {
    std::vector<AuditImage> images(entries.size());
#pragma omp parallel for schedule(dynamic, 8)
    for (std::ptrdiff_t i = 0; i < std::ptrdiff_t(entries.size()); ++i)
        images[size_t(i)] = analyse_file(entries[size_t(i)].path);
    return audit_analysed(std::move(entries), std::move(images), opt);
}

// The files of a class-folder data set (root/<class>/<file>), classes and files sorted.
// Every regular file is listed (content decides later whether it is an image; an
// unreadable one is reported, not skipped). Names are "<root's name>/<class>/<file>", the
// form the shared DUPLICATES_TRAINING.tsv uses. Throws tlcpu::Error naming the path when
// the folder is missing or has no class subfolders.
inline std::vector<AuditEntry> audit_entries(const std::filesystem::path& root, int folder = 0) {
    namespace fs = std::filesystem;
    check(fs::is_directory(root), root.string() + ": no such folder");
    fs::path norm = fs::absolute(root).lexically_normal();
    if (norm.filename().empty()) norm = norm.parent_path();
    const std::string base = norm.filename().string();
    std::vector<std::string> classes;
    for (const auto& e : fs::directory_iterator(root))
        if (e.is_directory() && e.path().filename().string()[0] != '.') classes.push_back(e.path().filename().string());
    std::sort(classes.begin(), classes.end());
    check(!classes.empty(), root.string() + ": no class subfolders (expected " + root.string() + "/<class>/<image files>)");
    std::vector<AuditEntry> out;
    for (const auto& c : classes) {
        std::vector<std::string> files;
        for (const auto& e : fs::directory_iterator(root / c))
            if (e.is_regular_file()) files.push_back(e.path().filename().string());
        std::sort(files.begin(), files.end());
        for (const auto& f : files) out.push_back({(root / c / f).string(), base + "/" + c + "/" + f, c, folder});
    }
    return out;
}

// ---------------------------------------------------------------------------------------
// Writing the findings
// ---------------------------------------------------------------------------------------

// kind<TAB>distance<TAB>folder_a<TAB>class_a<TAB>file_a<TAB>folder_b<TAB>class_b<TAB>file_b
inline void write_pairs_tsv(const AuditReport& r, const std::string& path) {
    std::ofstream out(path);
    check(bool(out), path + ": cannot write");
    out << "kind\tdistance\tfolder_a\tclass_a\tfile_a\tfolder_b\tclass_b\tfile_b\n";
    for (const auto& p : r.pairs) {
        const auto &a = r.entries[p.a], &b = r.entries[p.b];
        out << to_string(p.kind) << '\t' << p.distance << '\t' << a.folder << '\t' << a.cls << '\t' << a.name << '\t'
            << b.folder << '\t' << b.cls << '\t' << b.name << '\n';
    }
    check(bool(out), path + ": write failed");
}

// The format of the shared DUPLICATES_TRAINING.tsv: '#' comment lines, then
// kind<TAB>key<TAB>comma-separated files, kind 'pixels' (identical decoded pixels). The
// first file of a group is the one to keep. With `near`, writes the near components
// instead, kind 'phash', key = the pHash of the first file.
inline void write_groups_tsv(const AuditReport& r, const std::string& path, bool near = false) {
    std::ofstream out(path);
    check(bool(out), path + ": cannot write");
    auto line = [&](const char* kind, const std::string& key, const std::vector<size_t>& members) {
        out << kind << '\t' << key << '\t';
        for (size_t i = 0; i < members.size(); ++i) out << (i ? "," : "") << r.entries[members[i]].name;
        out << '\n';
    };
    if (!near) {
        out << "# kind\tkey\tfiles (comma-separated); 'pixels' = identical decoded RGB pixels and size (stb decoder), "
               "key = 128-bit hash of them; keep the first file of each group\n";
        for (const auto& g : r.groups) line("pixels", imagehash::hex(g.key), g.members);
    } else {
        out << "# kind\tkey\tfiles (comma-separated); 'phash' = joined by exact copies and near duplicates (pHash "
               "Hamming distance <= "
            << r.options.threshold << " confirmed by thumbnail RMS <= " << r.options.max_rms
            << "), key = pHash of the first file; keep the first file of each group\n";
        for (const auto& c : r.near_components) line("phash", imagehash::hex(r.images[c[0]].phash), c);
    }
    check(bool(out), path + ": write failed");
}

}  // namespace tlcpu::data

// inspect_data: what is in a class-folder image data set, and what leaks between two.
//
//   inspect_data DIR [DIR2] [--out REPORT_DIR] [--threshold N] [--max-rms X] [--samples K]
//
// For each folder: images per class, sizes (bucketed by the longest side, and the most
// common exact sizes), gray versus colour per class, files whose content is not what their
// name says, unreadable files, and a PNG montage of K samples per class (one row per class).
// Then the duplicate audit (tlcpu/data/audit.hpp): exact duplicates (identical decoded
// pixels) and near duplicates (pHash candidates confirmed by thumbnails) within each folder
// and, with DIR2, across the two; label conflicts; counts per class. Writes to REPORT_DIR:
//   montage.png (DIR), montage2.png (DIR2),
//   pairs.tsv        kind, distance, folder_a, class_a, file_a, folder_b, class_b, file_b
//   duplicates.tsv   exact groups in the format of the shared DUPLICATES_TRAINING.tsv (kind
//                    'pixels'); keep the first file of each group, drop the rest
//   near_groups.tsv  exact and near duplicates joined transitively, same format (kind 'phash')
#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include <omp.h>

#include <CLI/CLI.hpp>
#include <stb_image.h>
#include <stb_image_resize.h>
#include <stb_image_write.h>
#include <tlcpu/core/error.hpp>
#include <tlcpu/data/audit.hpp>

namespace fs = std::filesystem;
using namespace tlcpu;
using namespace tlcpu::data;

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::vector<std::string> classes_of(const AuditReport& r, int folder) {
    std::vector<std::string> c;
    for (const auto& [key, counts] : r.per_class)
        if (key.first == folder) c.push_back(key.second);
    return c;  // the map is ordered, so these are sorted
}

std::string lower_extension(const std::string& name) {
    std::string e = fs::path(name).extension().string();
    std::transform(e.begin(), e.end(), e.begin(), [](unsigned char ch) { return char(std::tolower(ch)); });
    return e;
}

bool extension_matches(const std::string& ext, const std::string& format) {
    if (format == "jpeg") return ext == ".jpg" || ext == ".jpeg" || ext == ".jpe" || ext == ".jfif";
    if (format == "png") return ext == ".png";
    if (format == "bmp") return ext == ".bmp";
    if (format == "gif") return ext == ".gif";
    return false;
}

// Size buckets by the longest side.
constexpr const char* bucket_names[] = {"<256", "256-511", "512", "513-1023", ">=1024"};
int size_bucket(int w, int h) {
    const int m = std::max(w, h);
    return m < 256 ? 0 : m < 512 ? 1 : m == 512 ? 2 : m < 1024 ? 3 : 4;
}

void print_folder(const AuditReport& r, int folder, const std::string& dir) {
    const auto classes = classes_of(r, folder);
    size_t files = 0, unreadable = 0;
    for (const auto& c : classes) files += r.per_class.at({folder, c}).files, unreadable += r.per_class.at({folder, c}).unreadable;
    std::printf("\n=== %s (folder %d): %zu files in %zu classes, %zu unreadable ===\n", dir.c_str(), folder, files,
                classes.size(), unreadable);
    std::vector<std::string> empty;  // class folders with no files do not appear in the audit
    for (const auto& e : fs::directory_iterator(dir))
        if (e.is_directory() && e.path().filename().string()[0] != '.' &&
            !std::binary_search(classes.begin(), classes.end(), e.path().filename().string()))
            empty.push_back(e.path().filename().string());
    std::sort(empty.begin(), empty.end());
    for (const auto& c : empty) std::printf("warning: %s: class folder has no files\n", (fs::path(dir) / c).string().c_str());

    struct Row {
        size_t files = 0, ok = 0, gray_enc = 0, colour_enc = 0, colour_but_gray = 0, jpeg = 0, png = 0, other = 0;
        std::array<size_t, 5> buckets{};
    };
    std::map<std::string, Row> rows;
    std::map<std::pair<int, int>, size_t> sizes;
    std::vector<size_t> misnamed;
    int min_side = 1 << 30, max_side = 0;
    for (size_t i = 0; i < r.entries.size(); ++i) {
        if (r.entries[i].folder != folder) continue;
        const auto& im = r.images[i];
        Row& row = rows[r.entries[i].cls];
        ++row.files;
        if (!im.ok) continue;
        ++row.ok;
        (im.gray_encoded() ? row.gray_enc : row.colour_enc)++;
        row.colour_but_gray += !im.gray_encoded() && im.gray_pixels;
        (im.format == "jpeg" ? row.jpeg : im.format == "png" ? row.png : row.other)++;
        ++row.buckets[size_t(size_bucket(im.width, im.height))];
        ++sizes[{im.width, im.height}];
        min_side = std::min({min_side, im.width, im.height});
        max_side = std::max({max_side, im.width, im.height});
        if (!extension_matches(lower_extension(r.entries[i].name), im.format)) misnamed.push_back(i);
    }

    std::printf("\nimages per class and encoding (channels as stored in the file; 'gray pixels' = a colour-encoded\n"
                "file whose decoded pixels all have R == G == B)\n");
    std::printf("%-14s %7s %7s %8s %12s %7s %6s %6s\n", "class", "files", "gray", "colour", "gray pixels", "jpeg", "png",
                "other");
    Row total;
    for (const auto& c : classes) {
        const Row& w = rows[c];
        std::printf("%-14.14s %7zu %7zu %8zu %12zu %7zu %6zu %6zu\n", c.c_str(), w.files, w.gray_enc, w.colour_enc,
                    w.colour_but_gray, w.jpeg, w.png, w.other);
        total.files += w.files, total.gray_enc += w.gray_enc, total.colour_enc += w.colour_enc;
        total.colour_but_gray += w.colour_but_gray, total.jpeg += w.jpeg, total.png += w.png, total.other += w.other;
        for (size_t b = 0; b < 5; ++b) total.buckets[b] += w.buckets[b];
    }
    std::printf("%-14s %7zu %7zu %8zu %12zu %7zu %6zu %6zu\n", "total", total.files, total.gray_enc, total.colour_enc,
                total.colour_but_gray, total.jpeg, total.png, total.other);

    std::printf("\nsizes per class, by the longest side\n%-14s", "class");
    for (const char* b : bucket_names) std::printf(" %9s", b);
    std::printf("\n");
    for (const auto& c : classes) {
        std::printf("%-14.14s", c.c_str());
        for (size_t b = 0; b < 5; ++b) std::printf(" %9zu", rows[c].buckets[b]);
        std::printf("\n");
    }
    std::printf("%-14s", "total");
    for (size_t b = 0; b < 5; ++b) std::printf(" %9zu", total.buckets[b]);
    std::printf("\n");

    std::vector<std::pair<size_t, std::pair<int, int>>> common;
    for (const auto& [wh, n] : sizes) common.push_back({n, wh});
    std::stable_sort(common.begin(), common.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
    std::printf("%zu distinct sizes; sides from %d to %d px; most common:", sizes.size(), sizes.empty() ? 0 : min_side,
                max_side);
    for (size_t k = 0; k < std::min<size_t>(8, common.size()); ++k)
        std::printf("%s %dx%d (%zu)", k ? "," : "", common[k].second.first, common[k].second.second, common[k].first);
    std::printf("\n");

    if (!misnamed.empty()) {
        std::printf("\n%zu files whose content is not what their extension says (decoded by content anyway):\n",
                    misnamed.size());
        for (size_t k = 0; k < misnamed.size(); ++k) {
            if (k == 20) {
                std::printf("  ... and %zu more\n", misnamed.size() - 20);
                break;
            }
            std::printf("  %s is %s\n", r.entries[misnamed[k]].name.c_str(), r.images[misnamed[k]].format.c_str());
        }
    }
    size_t listed = 0;
    for (size_t i : r.unreadable)
        if (r.entries[i].folder == folder) {
            if (!listed++) std::printf("\nunreadable files:\n");
            std::printf("  %s: %s\n", r.entries[i].path.c_str(), r.images[i].error.c_str());
        }
}

// One row per class, K thumbnails evenly spread over its readable files (sorted by name),
// each letterboxed into a thumb x thumb cell on a mid-gray canvas.
void write_montage(const AuditReport& r, int folder, int samples, int thumb, const std::string& path) {
    const auto classes = classes_of(r, folder);
    const int gap = 4, cols = samples, rows = int(classes.size());
    const int W = gap + cols * (thumb + gap), H = gap + rows * (thumb + gap);
    std::vector<uint8_t> canvas(size_t(W) * size_t(H) * 3, 96);
    for (int row = 0; row < rows; ++row) {
        std::vector<size_t> files;
        for (size_t i = 0; i < r.entries.size(); ++i)
            if (r.entries[i].folder == folder && r.entries[i].cls == classes[size_t(row)] && r.images[i].ok)
                files.push_back(i);
        const int n = std::min<int>(cols, int(files.size()));
        for (int k = 0; k < n; ++k) {
            const size_t i = files[size_t((2 * k + 1) * files.size() / size_t(2 * n))];
            int w = 0, h = 0, c = 0;
            unsigned char* px = stbi_load(r.entries[i].path.c_str(), &w, &h, &c, 3);
            if (!px) continue;
            const double s = double(thumb) / std::max(w, h);
            const int tw = std::max(1, int(w * s + 0.5)), th = std::max(1, int(h * s + 0.5));
            std::vector<uint8_t> t(size_t(tw) * size_t(th) * 3);
            const bool resized = stbir_resize_uint8(px, w, h, 0, t.data(), tw, th, 0, 3);
            stbi_image_free(px);
            if (!resized) continue;
            const int x0 = gap + k * (thumb + gap) + (thumb - tw) / 2, y0 = gap + row * (thumb + gap) + (thumb - th) / 2;
            for (int y = 0; y < th; ++y)
                std::copy_n(&t[size_t(y) * size_t(tw) * 3], size_t(tw) * 3,
                            &canvas[(size_t(y0 + y) * size_t(W) + size_t(x0)) * 3]);
        }
    }
    check(stbi_write_png(path.c_str(), W, H, 3, canvas.data(), W * 3) != 0, path + ": cannot write the montage");
    std::printf("montage: %s (%d x %d px; rows:", path.c_str(), W, H);
    for (const auto& c : classes) std::printf(" %s", c.c_str());
    std::printf(")\n");
}

void print_audit(const AuditReport& r, const std::vector<std::string>& dirs) {
    const bool two = r.folders == 2;
    std::printf("\n=== duplicate audit%s ===\n", two ? " (folder 0 = DIR, folder 1 = DIR2)" : "");
    std::map<size_t, size_t> sizes;
    for (const auto& g : r.groups) ++sizes[g.members.size()];
    std::printf("exact duplicates (identical decoded pixels and size): %zu groups (", r.groups.size());
    for (auto it = sizes.begin(); it != sizes.end(); ++it)
        std::printf("%s%zu of %zu", it == sizes.begin() ? "" : ", ", it->second, it->first);
    std::printf(")\n");
    for (int f = 0; f < r.folders; ++f)
        std::printf("  within %s: %zu groups, %zu redundant copies\n", dirs[size_t(f)].c_str(), r.groups_within[size_t(f)],
                    r.redundant_within[size_t(f)]);
    if (two) {
        size_t leaked = 0;
        for (const auto& [key, c] : r.per_class) leaked += key.first == 1 ? c.exact_cross : 0;
        std::printf("  across the two: %zu groups; %zu files of %s have an exact copy in %s\n", r.groups_cross, leaked,
                    dirs[1].c_str(), dirs[0].c_str());
    }

    std::printf("\nnear duplicates: pHash within %d of 64 bits (candidates), confirmed when the standardised 32x32\n"
                "thumbnails differ by RMS <= %.3g; exact pairs excluded\n",
                r.options.threshold, r.options.max_rms);
    std::printf("  by pHash distance (confirmed / candidates):");
    for (int d = 0; d <= r.options.threshold; ++d)
        if (r.candidates_by_distance[size_t(d)])
            std::printf(" %d: %zu/%zu", d, r.near_by_distance[size_t(d)], r.candidates_by_distance[size_t(d)]);
    std::printf("\n");
    for (int f = 0; f < r.folders; ++f)
        std::printf("  within %s: %zu pairs\n", dirs[size_t(f)].c_str(), r.near_pairs_within[size_t(f)]);
    if (two) std::printf("  across the two: %zu pairs\n", r.near_pairs_cross);
    std::printf("  %zu pairs between distinct images (exact copies counted once); %zu near-duplicate clusters\n",
                r.near_pairs_distinct, r.near_components.size());

    std::printf("\nper class (redundant: exact copies beyond the first in the folder; near: files with a confirmed\n"
                "near duplicate; conflict: files in an exact or near pair whose classes differ)\n");
    std::printf("%-6s %-14s %7s %10s %6s", "folder", "class", "files", "redundant", "near");
    if (two) std::printf(" %12s %11s", "exact-across", "near-across");
    std::printf(" %9s\n", "conflict");
    for (const auto& [key, c] : r.per_class) {
        std::printf("%-6d %-14.14s %7zu %10zu %6zu", key.first, key.second.c_str(), c.files, c.redundant, c.near_within);
        if (two) std::printf(" %12zu %11zu", c.exact_cross, c.near_cross);
        std::printf(" %9zu\n", c.conflicts);
    }

    const size_t conflicts = r.conflict_groups + r.conflict_pairs_near;
    std::printf("\nlabel conflicts: %zu exact groups span two classes, %zu near pairs do%s\n", r.conflict_groups,
                r.conflict_pairs_near, conflicts ? ":" : "");
    size_t shown = 0;
    for (const auto& g : r.groups) {
        if (!g.conflict || shown++ >= 20) continue;
        std::printf("  exact:");
        for (size_t m : g.members) std::printf(" %s", r.entries[m].name.c_str());
        std::printf("\n");
    }
    for (const auto& p : r.pairs) {
        if (p.kind != AuditPair::Kind::near || !p.conflict || shown++ >= 40) continue;
        std::printf("  near (%d bits, rms %.3f): %s  %s\n", p.distance, p.rms, r.entries[p.a].name.c_str(),
                    r.entries[p.b].name.c_str());
    }
    if (shown > 40) std::printf("  ... see pairs.tsv for all\n");
}

}  // namespace

int main(int argc, char** argv) {
    CLI::App app{"Inspect a class-folder image data set; with a second folder, audit the leakage between them"};
    std::string dir, dir2, out = "inspect_out";
    AuditOptions opt;
    int samples = 8, thumb = 96;
    app.add_option("DIR", dir, "Folder of class subfolders (e.g. ../shared/data/brain-tumor-mri/Training)")->required();
    app.add_option("DIR2", dir2, "A second such folder (e.g. a test split), audited against DIR");
    app.add_option("--out", out, "Folder for montage.png, pairs.tsv, duplicates.tsv, near_groups.tsv")->capture_default_str();
    app.add_option("--threshold", opt.threshold, "Near-duplicate candidates: pHash Hamming distance at most this (0..64)")
        ->check(CLI::Range(0, 64))
        ->capture_default_str();
    app.add_option("--max-rms", opt.max_rms,
                   "Candidates are confirmed when their standardised thumbnails differ by at most this RMS (2: no check)")
        ->check(CLI::Range(0.0, 2.0))
        ->capture_default_str();
    app.add_option("--samples", samples, "Montage thumbnails per class")->check(CLI::Range(1, 64))->capture_default_str();
    app.add_option("--thumb", thumb, "Montage thumbnail side in pixels")->check(CLI::Range(16, 512))->capture_default_str();
    CLI11_PARSE(app, argc, argv);

    try {
        const auto t0 = std::chrono::steady_clock::now();
        std::vector<std::string> dirs{dir};
        std::vector<AuditEntry> entries = audit_entries(dir, 0);
        if (!dir2.empty()) {
            check(fs::is_directory(dir2), dir2 + ": no such folder");
            check(!fs::equivalent(dir, dir2),
                  dir2 + ": is the same folder as " + dir + "; give DIR alone to audit one folder");
            auto more = audit_entries(dir2, 1);
            entries.insert(entries.end(), more.begin(), more.end());
            dirs.push_back(dir2);
        }
        std::error_code ec;
        fs::create_directories(out, ec);
        check(fs::is_directory(out), out + ": cannot create the report folder" + (ec ? " (" + ec.message() + ")" : ""));
        std::printf("tlcpu inspect_data: %zu files in %zu folder(s), %d threads\n", entries.size(), dirs.size(),
                    omp_get_max_threads());

        const auto t1 = std::chrono::steady_clock::now();
        const AuditReport r = audit_images(std::move(entries), opt);
        const double audit_s = seconds_since(t1);

        for (int f = 0; f < r.folders; ++f) print_folder(r, f, dirs[size_t(f)]);
        std::printf("\n");
        for (int f = 0; f < r.folders; ++f)
            write_montage(r, f, samples, thumb, (fs::path(out) / (f == 0 ? "montage.png" : "montage2.png")).string());
        print_audit(r, dirs);

        const std::string pairs = (fs::path(out) / "pairs.tsv").string(),
                          groups = (fs::path(out) / "duplicates.tsv").string(),
                          near = (fs::path(out) / "near_groups.tsv").string();
        write_pairs_tsv(r, pairs);
        write_groups_tsv(r, groups);
        write_groups_tsv(r, near, true);
        std::printf("\nwrote %s (%zu pairs), %s (%zu groups), %s (%zu clusters)\n", pairs.c_str(), r.pairs.size(),
                    groups.c_str(), r.groups.size(), near.c_str(), r.near_components.size());
        std::printf("time: %.2f s decoding, hashing and matching %zu files; %.2f s in all\n", audit_s, r.entries.size(),
                    seconds_since(t0));
    } catch (const std::exception& e) {
        std::fprintf(stderr, "error: %s\n", e.what());
        return 1;
    }
    return 0;
}

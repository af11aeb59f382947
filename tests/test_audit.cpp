// The duplicate audit (tlcpu/data/audit.hpp): hashes, planted duplicates in a folder pair
// written here with stb_image_write, the TSV files, thread-count independence; and, in the
// "fixture" suite, the real Training folder against the shared DUPLICATES_TRAINING.tsv.
#include <doctest/doctest.h>

#include <omp.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <stb_image.h>
#include <stb_image_resize.h>
#include <stb_image_write.h>

#include <tlcpu/core/random.hpp>
#include <tlcpu/data/audit.hpp>

namespace tlcpu_test_audit {

namespace fs = std::filesystem;
using namespace tlcpu;
using namespace tlcpu::data;

namespace {

// A smooth synthetic picture: a gradient and a few coloured Gaussian blobs placed relative
// to the image size, drawn from the seed. Different seeds give unrelated pictures.
std::vector<uint8_t> blobs(int w, int h, uint64_t seed) {
    std::vector<uint8_t> px(size_t(w) * size_t(h) * 3);
    struct Blob { double x, y, r, c[3]; };
    std::vector<Blob> bs;
    for (uint64_t k = 0; k < 7; ++k) {
        auto u = [&](uint64_t j) { return double(uniform01(seed, k, j)); };
        bs.push_back({u(0), u(1), 0.06 + 0.18 * u(2), {255 * u(3), 255 * u(4), 255 * u(5)}});
    }
    const double gx = double(uniform01(seed, 99, 0)) * 80, gy = double(uniform01(seed, 99, 1)) * 80;
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            const double fx = (x + 0.5) / w, fy = (y + 0.5) / h;
            for (int c = 0; c < 3; ++c) {
                double v = gx * fx + gy * fy;
                for (const auto& b : bs)
                    v += b.c[c] * std::exp(-((fx - b.x) * (fx - b.x) + (fy - b.y) * (fy - b.y)) / (2 * b.r * b.r));
                px[(size_t(y) * size_t(w) + size_t(x)) * 3 + size_t(c)] = uint8_t(std::clamp(v, 0.0, 255.0));
            }
        }
    return px;
}

// The picture under a strong 10-cycle ripple: the 8x8 lowest DCT frequencies (pHash) barely
// move, the 32x32 thumbnail changes a lot.
std::vector<uint8_t> ripple(const std::vector<uint8_t>& rgb, int w, int h) {
    std::vector<uint8_t> out(rgb.size());
    for (int y = 0; y < h; ++y)
        for (int x = 0; x < w; ++x) {
            const double r = 70 * std::sin(2 * std::numbers::pi * 10 * (x + 0.5) / w) *
                             std::sin(2 * std::numbers::pi * 10 * (y + 0.5) / h);
            for (int c = 0; c < 3; ++c) {
                const size_t i = (size_t(y) * size_t(w) + size_t(x)) * 3 + size_t(c);
                out[i] = uint8_t(std::clamp(rgb[i] + r, 0.0, 255.0));
            }
        }
    return out;
}

std::vector<uint8_t> to_gray(const std::vector<uint8_t>& rgb) {
    std::vector<uint8_t> g(rgb.size() / 3);
    for (size_t i = 0; i < g.size(); ++i)
        g[i] = uint8_t((299 * rgb[3 * i] + 587 * rgb[3 * i + 1] + 114 * rgb[3 * i + 2]) / 1000);
    return g;
}

std::vector<uint8_t> resized(const std::vector<uint8_t>& rgb, int w, int h, int w2, int h2) {
    std::vector<uint8_t> out(size_t(w2) * size_t(h2) * 3);
    REQUIRE(stbir_resize_uint8(rgb.data(), w, h, 0, out.data(), w2, h2, 0, 3));
    return out;
}

// Encodes to JPEG in memory and decodes again: what a re-encoded copy looks like.
std::vector<uint8_t> jpeg_roundtrip(const std::vector<uint8_t>& rgb, int w, int h, int quality) {
    std::vector<unsigned char> bytes;
    auto sink = [](void* ctx, void* data, int size) {
        auto* v = static_cast<std::vector<unsigned char>*>(ctx);
        v->insert(v->end(), static_cast<unsigned char*>(data), static_cast<unsigned char*>(data) + size);
    };
    REQUIRE(stbi_write_jpg_to_func(sink, &bytes, w, h, 3, rgb.data(), quality));
    int w2 = 0, h2 = 0, c = 0;
    unsigned char* px = stbi_load_from_memory(bytes.data(), int(bytes.size()), &w2, &h2, &c, 3);
    REQUIRE(px != nullptr);
    std::vector<uint8_t> out(px, px + size_t(w2) * size_t(h2) * 3);
    stbi_image_free(px);
    return out;
}

struct TempDir {
    fs::path path;
    explicit TempDir(const std::string& tag) {
        path = fs::temp_directory_path() / ("tlcpu_" + tag + "_" + std::to_string(::getpid()));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

void write_png(const fs::path& p, int w, int h, int comp, const std::vector<uint8_t>& px) {
    fs::create_directories(p.parent_path());
    REQUIRE(stbi_write_png(p.string().c_str(), w, h, comp, px.data(), w * comp));
}
void write_jpg(const fs::path& p, int w, int h, int comp, const std::vector<uint8_t>& px, int quality) {
    fs::create_directories(p.parent_path());
    REQUIRE(stbi_write_jpg(p.string().c_str(), w, h, comp, px.data(), quality));
}
void write_text(const fs::path& p, const std::string& text) {
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
}

std::vector<std::string> read_lines(const fs::path& p) {
    std::ifstream in(p);
    std::vector<std::string> lines;
    for (std::string l; std::getline(in, l);) lines.push_back(l);
    return lines;
}

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> out;
    std::stringstream ss(s);
    for (std::string f; std::getline(ss, f, sep);) out.push_back(f);
    return out;
}

size_t index_of(const AuditReport& r, const std::string& name) {
    for (size_t i = 0; i < r.entries.size(); ++i)
        if (r.entries[i].name == name) return i;
    FAIL("no entry named " << name);
    return 0;
}

const AuditPair* find_pair(const AuditReport& r, const std::string& a, const std::string& b) {
    size_t i = index_of(r, a), j = index_of(r, b);
    if (i > j) std::swap(i, j);
    for (const auto& p : r.pairs)
        if (p.a == i && p.b == j) return &p;
    return nullptr;
}

// The planted data set. Folder 0 "train", folder 1 "test"; image families:
//   X  train/cat/base.png, its byte copy train/cat/copy_named.jpg (a PNG under a .jpg name),
//      train/cat/reenc.jpg (JPEG q90), train/cat/up.png (+5%), train/cat/down.png (-5%),
//      test/cat/x_q75.jpg (JPEG q75, across the folders)
//   Y  train/cat/other.png, and test/dog/y_q90.jpg: a near duplicate under another class
//   Z  train/cat/gray1.png (1-channel PNG), train/cat/gray3.png (3-channel, R == G == B,
//      same pixels), train/cat/gray_q95.jpg (3-channel JPEG of the same gray picture)
//   W  train/cat/w.png and its byte copy train/dog/w.png: a label conflict
//   V  train/cat/v.png and its byte copy test/cat/v_leak.png: a leak across the folders
//   and train/cat/textured.png: X under a fine ripple, a different picture with the same
//      low frequencies (like two unrelated scans of one head shape): a pHash candidate that
//      the thumbnails must reject
// plus train/cat/broken.jpg (text) and train/cat/empty.jpg (0 bytes), unreadable.
constexpr int S = 128;
struct Planted {
    TempDir dir{"audit"};
    std::vector<uint8_t> x = blobs(S, S, 11), y = blobs(S, S, 22), z = to_gray(blobs(S, S, 33)), w = blobs(S, S, 44),
                         v = blobs(S, S, 55);
    Planted() {
        const fs::path tr = dir.path / "train", te = dir.path / "test";
        write_png(tr / "cat/base.png", S, S, 3, x);
        fs::copy_file(tr / "cat/base.png", tr / "cat/copy_named.jpg");
        write_jpg(tr / "cat/reenc.jpg", S, S, 3, x, 90);
        write_png(tr / "cat/up.png", 134, 134, 3, resized(x, S, S, 134, 134));
        write_png(tr / "cat/down.png", 122, 122, 3, resized(x, S, S, 122, 122));
        write_jpg(te / "cat/x_q75.jpg", S, S, 3, x, 75);
        write_png(tr / "cat/other.png", S, S, 3, y);
        write_png(tr / "cat/textured.png", S, S, 3, ripple(x, S, S));
        write_jpg(te / "dog/y_q90.jpg", S, S, 3, y, 90);
        write_png(tr / "cat/gray1.png", S, S, 1, z);
        std::vector<uint8_t> z3(z.size() * 3);
        for (size_t i = 0; i < z.size(); ++i) z3[3 * i] = z3[3 * i + 1] = z3[3 * i + 2] = z[i];
        write_png(tr / "cat/gray3.png", S, S, 3, z3);
        write_jpg(tr / "cat/gray_q95.jpg", S, S, 3, z3, 95);
        write_png(tr / "cat/w.png", S, S, 3, w);
        fs::create_directories(tr / "dog");
        fs::copy_file(tr / "cat/w.png", tr / "dog/w.png");
        write_png(tr / "cat/v.png", S, S, 3, v);
        fs::copy_file(tr / "cat/v.png", te / "cat/v_leak.png");
        write_text(tr / "cat/broken.jpg", "this is not an image\n");
        write_text(tr / "cat/empty.jpg", "");
    }
    std::vector<AuditEntry> entries() const {
        auto e = audit_entries(dir.path / "train", 0);
        auto f = audit_entries(dir.path / "test", 1);
        e.insert(e.end(), f.begin(), f.end());
        return e;
    }
};

}  // namespace

TEST_CASE("pixel_key: equal pixels and size match; a changed pixel or a transposed size does not") {
    std::vector<uint8_t> a = blobs(7, 3, 1), b = a;  // 63 bytes: three 16-byte blocks and a tail
    CHECK(imagehash::pixel_key(a.data(), 7, 3) == imagehash::pixel_key(b.data(), 7, 3));
    CHECK(imagehash::pixel_key(a.data(), 7, 3) != imagehash::pixel_key(a.data(), 3, 7));
    b[17] ^= 1;
    CHECK(imagehash::pixel_key(a.data(), 7, 3) != imagehash::pixel_key(b.data(), 7, 3));
    b = a;
    b.back() ^= 1;  // the tail after the last block counts too
    CHECK(imagehash::pixel_key(a.data(), 7, 3) != imagehash::pixel_key(b.data(), 7, 3));
    CHECK(imagehash::hex(imagehash::pixel_key(a.data(), 7, 3)).size() == 32);
}

TEST_CASE("pHash: half the bits set, stable under JPEG q75-95 and a +-10% resize, far for another picture") {
    const AuditOptions opt;
    const auto x = blobs(S, S, 7);
    const uint64_t h = imagehash::phash64(x.data(), S, S);
    CHECK(std::popcount(h) == 32);
    for (int q : {75, 90, 95}) {
        CAPTURE(q);
        const auto y = jpeg_roundtrip(x, S, S, q);
        CHECK(y != x);  // a real re-encoding, not the same pixels
        CHECK(imagehash::hamming(h, imagehash::phash64(y.data(), S, S)) <= opt.threshold);
    }
    for (int side : {115, 122, 134, 141}) {
        CAPTURE(side);
        const auto y = resized(x, S, S, side, side);
        CHECK(imagehash::hamming(h, imagehash::phash64(y.data(), side, side)) <= opt.threshold);
        const auto g = imagehash::gray_area_resize(y.data(), side, side, 32, 32);
        CHECK(imagehash::thumb_rms(imagehash::thumbnail(imagehash::gray_area_resize(x.data(), S, S, 32, 32)),
                                   imagehash::thumbnail(g)) <= opt.max_rms);
    }
    for (uint64_t seed : {8, 9, 10}) {
        CAPTURE(seed);
        const auto o = blobs(S, S, seed);
        CHECK(imagehash::hamming(h, imagehash::phash64(o.data(), S, S)) > opt.threshold);
    }
    CHECK(imagehash::hamming(0, ~uint64_t(0)) == 64);
    CHECK(imagehash::hamming(0b1011, 0b0110) == 3);
}

TEST_CASE("thumbnail comparison: 0 for the same picture, unchanged by brightness and contrast, large for another") {
    const auto x = blobs(64, 64, 3), o = blobs(64, 64, 4);
    auto thumb = [](const std::vector<uint8_t>& p) {
        return imagehash::thumbnail(imagehash::gray_area_resize(p.data(), 64, 64, 32, 32));
    };
    std::vector<uint8_t> dim(x.size());
    for (size_t i = 0; i < x.size(); ++i) dim[i] = uint8_t(10 + x[i] / 2);  // darker, less contrast
    CHECK(imagehash::thumb_rms(thumb(x), thumb(x)) == 0.0);
    CHECK(imagehash::thumb_rms(thumb(x), thumb(dim)) < 0.02);
    CHECK(imagehash::thumb_rms(thumb(x), thumb(o)) > 0.5);
    const std::vector<uint8_t> flat(x.size(), 90);
    CHECK(imagehash::thumb_rms(thumb(flat), thumb(flat)) == 0.0);  // a flat image standardises to zeros, not NaN
}

TEST_CASE("analyse_pixels: the stored channel count and whether the pixels are gray are separate facts") {
    std::vector<uint8_t> g(3 * 16 * 16, 77);
    CHECK(analyse_pixels(g.data(), 16, 16, 3).gray_pixels);
    CHECK_FALSE(analyse_pixels(g.data(), 16, 16, 3).gray_encoded());
    CHECK(analyse_pixels(g.data(), 16, 16, 1).gray_encoded());
    g[3 * 100 + 2] = 78;  // one blue value off
    CHECK_FALSE(analyse_pixels(g.data(), 16, 16, 3).gray_pixels);
}

TEST_CASE("audit_entries: classes and files sorted, names relative to the folder's parent, clear errors") {
    TempDir d("entries");
    write_text(d.path / "ds/b/2.jpg", "x");
    write_text(d.path / "ds/b/1.jpg", "x");
    write_text(d.path / "ds/a/9.png", "x");
    write_text(d.path / "ds/README.txt", "not a class");
    const auto e = audit_entries(d.path / "ds/", 1);  // a trailing slash must not lose the folder name
    REQUIRE(e.size() == 3);
    CHECK(e[0].name == "ds/a/9.png");
    CHECK(e[1].name == "ds/b/1.jpg");
    CHECK(e[2].name == "ds/b/2.jpg");
    CHECK(e[2].cls == "b");
    CHECK(e[2].folder == 1);
    CHECK(fs::exists(e[0].path));
    CHECK_THROWS_WITH_AS(audit_entries(d.path / "missing"), doctest::Contains("missing: no such folder"), Error);
    write_text(d.path / "flat/1.jpg", "x");
    CHECK_THROWS_WITH_AS(audit_entries(d.path / "flat"), doctest::Contains("flat: no class subfolders"), Error);
}

TEST_CASE("audit: planted exact and near duplicates, a leak across folders, label conflicts, unreadable files") {
    const Planted p;
    const AuditReport r = audit_images(p.entries());
    const int T = r.options.threshold;
    REQUIRE(r.folders == 2);
    REQUIRE(r.entries.size() == 18);

    SUBCASE("what each file is") {
        const auto& base = r.images[index_of(r, "train/cat/base.png")];
        CHECK(base.ok);
        CHECK(base.format == "png");
        CHECK(base.channels == 3);
        CHECK_FALSE(base.gray_pixels);
        CHECK(base.width == S);
        const auto& named = r.images[index_of(r, "train/cat/copy_named.jpg")];
        CHECK(named.format == "png");  // content, not the name
        const auto& up = r.images[index_of(r, "train/cat/up.png")];
        CHECK(up.width == 134);
        CHECK(up.height == 134);
        const auto& g1 = r.images[index_of(r, "train/cat/gray1.png")];
        CHECK(g1.channels == 1);
        CHECK(g1.gray_encoded());
        CHECK(g1.gray_pixels);
        const auto& g3 = r.images[index_of(r, "train/cat/gray3.png")];
        CHECK(g3.channels == 3);
        CHECK_FALSE(g3.gray_encoded());
        CHECK(g3.gray_pixels);
        const auto& gj = r.images[index_of(r, "train/cat/gray_q95.jpg")];
        CHECK(gj.format == "jpeg");
        CHECK(gj.channels == 3);  // stored as YCbCr...
        CHECK(gj.gray_pixels);    // ...but effectively gray
        const auto& xj = r.images[index_of(r, "test/cat/x_q75.jpg")];
        CHECK(xj.channels == 3);
        CHECK_FALSE(xj.gray_pixels);
    }

    SUBCASE("unreadable files are collected with a reason") {
        REQUIRE(r.unreadable.size() == 2);
        CHECK(r.entries[r.unreadable[0]].name == "train/cat/broken.jpg");
        CHECK(r.images[r.unreadable[0]].error.find("not a decodable image") != std::string::npos);
        CHECK(r.entries[r.unreadable[1]].name == "train/cat/empty.jpg");
        CHECK(r.images[r.unreadable[1]].error == "the file is empty");
        CHECK(r.per_class.at({0, "cat"}).unreadable == 2);
    }

    SUBCASE("exact groups: byte copies, and equal pixels stored differently") {
        std::vector<std::vector<std::string>> groups;
        for (const auto& g : r.groups) {
            groups.emplace_back();
            for (size_t m : g.members) groups.back().push_back(r.entries[m].name);
        }
        const std::vector<std::vector<std::string>> expected{
            {"train/cat/base.png", "train/cat/copy_named.jpg"},
            {"train/cat/gray1.png", "train/cat/gray3.png"},  // 1-channel and R == G == B 3-channel
            {"train/cat/v.png", "test/cat/v_leak.png"},
            {"train/cat/w.png", "train/dog/w.png"},
        };
        CHECK(groups == expected);
        REQUIRE(r.groups.size() == 4);
        CHECK_FALSE(r.groups[0].cross_folder);
        CHECK_FALSE(r.groups[0].conflict);
        CHECK(r.groups[2].cross_folder);
        CHECK_FALSE(r.groups[2].conflict);
        CHECK_FALSE(r.groups[3].cross_folder);
        CHECK(r.groups[3].conflict);
        CHECK(r.groups_within[0] == 3);
        CHECK(r.redundant_within[0] == 3);
        CHECK(r.groups_within[1] == 0);
        CHECK(r.groups_cross == 1);
        CHECK(r.conflict_groups == 1);
        CHECK(r.conflict_pairs_exact == 1);
        // the re-encoded and resized copies are not exact
        CHECK(r.images[index_of(r, "train/cat/reenc.jpg")].key != r.images[index_of(r, "train/cat/base.png")].key);
    }

    SUBCASE("near pairs: re-encoded and resized copies within the threshold, the other picture beyond it") {
        for (const char* copy : {"train/cat/reenc.jpg", "train/cat/up.png", "train/cat/down.png", "test/cat/x_q75.jpg"}) {
            CAPTURE(copy);
            const AuditPair* q = find_pair(r, "train/cat/base.png", copy);
            REQUIRE(q != nullptr);
            CHECK(q->kind == AuditPair::Kind::near);
            CHECK(q->distance <= T);
            CHECK(q->rms <= r.options.max_rms);
            CHECK_FALSE(q->conflict);
        }
        const AuditPair* e = find_pair(r, "train/cat/base.png", "train/cat/copy_named.jpg");
        REQUIRE(e != nullptr);
        CHECK(e->kind == AuditPair::Kind::exact);  // exact, so not also listed as near
        CHECK(std::count_if(r.pairs.begin(), r.pairs.end(), [&](const AuditPair& q) {
                  return q.a == e->a && q.b == e->b;
              }) == 1);

        const auto ix = index_of(r, "train/cat/base.png"), iy = index_of(r, "train/cat/other.png");
        CHECK(imagehash::hamming(r.images[ix].phash, r.images[iy].phash) > T);
        CHECK(find_pair(r, "train/cat/base.png", "train/cat/other.png") == nullptr);

        // every near pair joins two members of one planted family, and all of them are found
        auto family = [&](size_t i) {
            const std::string& n = r.entries[i].name;
            for (const char* s : {"base", "copy_named", "reenc", "up.", "down", "x_q75"})
                if (n.find(s) != std::string::npos) return 'X';
            if (n.find("other") != std::string::npos || n.find("y_q90") != std::string::npos) return 'Y';
            if (n.find("gray") != std::string::npos) return 'Z';
            return '?';
        };
        size_t near = 0;
        for (const auto& q : r.pairs) {
            if (q.kind != AuditPair::Kind::near) continue;
            ++near;
            CAPTURE(r.entries[q.a].name);
            CAPTURE(r.entries[q.b].name);
            CHECK(family(q.a) != '?');
            CHECK(family(q.a) == family(q.b));
        }
        // X: 6 files, 15 pairs less the exact one; Y: 1; Z: gray_q95 with gray1 and gray3
        CHECK(near == 14 + 1 + 2);
        CHECK(r.near_pairs_within[0] == 9 + 2);
        CHECK(r.near_pairs_within[1] == 0);
        CHECK(r.near_pairs_cross == 5 + 1);
        CHECK(r.near_pairs_distinct == 10 + 1 + 1);  // copy_named and gray3 are exact copies
        CHECK(r.near_candidates >= near);

        // the rippled copy: close in pHash, but its thumbnail says it is another picture
        const auto it = index_of(r, "train/cat/textured.png");
        CHECK(imagehash::hamming(r.images[ix].phash, r.images[it].phash) <= T);
        CHECK(imagehash::thumb_rms(r.images[ix].thumb, r.images[it].thumb) > r.options.max_rms);
        CHECK(find_pair(r, "train/cat/base.png", "train/cat/textured.png") == nullptr);
        CHECK(r.near_candidates > near);
    }

    SUBCASE("label conflicts: the same picture under two classes, exact or near") {
        const AuditPair* w = find_pair(r, "train/cat/w.png", "train/dog/w.png");
        REQUIRE(w != nullptr);
        CHECK(w->kind == AuditPair::Kind::exact);
        CHECK(w->conflict);
        const AuditPair* y = find_pair(r, "train/cat/other.png", "test/dog/y_q90.jpg");
        REQUIRE(y != nullptr);
        CHECK(y->kind == AuditPair::Kind::near);
        CHECK(y->distance <= T);
        CHECK(y->conflict);
        CHECK(r.conflict_pairs_near == 1);
        size_t conflicting = 0;
        for (const auto& q : r.pairs) conflicting += q.conflict;
        CHECK(conflicting == 2);
    }

    SUBCASE("counts per class") {
        const auto& tc = r.per_class.at({0, "cat"});
        CHECK(tc.files == 14);
        CHECK(tc.redundant == 2);    // copy_named, gray3
        CHECK(tc.near_within == 8);  // base, copy_named, reenc, up, down; gray1, gray3, gray_q95
        CHECK(tc.exact_cross == 1);  // v.png
        CHECK(tc.near_cross == 6);   // the 5 X files with x_q75, other.png with y_q90
        CHECK(tc.conflicts == 2);    // w.png, other.png
        const auto& td = r.per_class.at({0, "dog"});
        CHECK(td.files == 1);
        CHECK(td.redundant == 1);  // w.png, a copy of train/cat/w.png
        CHECK(td.conflicts == 1);
        CHECK(r.per_class.at({1, "cat"}).exact_cross == 1);
        CHECK(r.per_class.at({1, "cat"}).near_cross == 1);
        CHECK(r.per_class.at({1, "dog"}).conflicts == 1);
        CHECK(r.per_class.at({1, "dog"}).near_cross == 1);
    }

    SUBCASE("a stricter threshold or thumbnail bound drops near pairs, never exact ones") {
        auto strict = audit_analysed(r.entries, r.images, {0, 0.10});
        auto loose_rms = audit_analysed(r.entries, r.images, {T, 0.0});
        for (const auto* s : {&strict, &loose_rms}) {
            CHECK(s->groups.size() == r.groups.size());
            for (const auto& q : s->pairs)
                if (q.kind == AuditPair::Kind::near) CHECK(q.distance <= s->options.threshold);
        }
        size_t near0 = 0;
        for (const auto& q : r.pairs) near0 += q.kind == AuditPair::Kind::near && q.distance == 0;
        CHECK(strict.near_by_distance[0] == near0);
        CHECK(strict.pairs.size() < r.pairs.size());
        CHECK(loose_rms.pairs.size() < r.pairs.size());
        CHECK_THROWS_AS(audit_analysed(r.entries, r.images, {65, 0.1}), Error);
    }

    SUBCASE("pairs.tsv and the groups TSV") {
        const fs::path pairs = p.dir.path / "pairs.tsv", groups = p.dir.path / "dups.tsv";
        write_pairs_tsv(r, pairs.string());
        write_groups_tsv(r, groups.string());
        const auto pl = read_lines(pairs);
        REQUIRE(pl.size() == r.pairs.size() + 1);
        CHECK(pl[0] == "kind\tdistance\tfolder_a\tclass_a\tfile_a\tfolder_b\tclass_b\tfile_b");
        for (size_t k = 1; k < pl.size(); ++k) CHECK(split(pl[k], '\t').size() == 8);
        CHECK(std::find(pl.begin(), pl.end(), "exact\t0\t0\tcat\ttrain/cat/v.png\t1\tcat\ttest/cat/v_leak.png") != pl.end());
        const AuditPair* y = find_pair(r, "train/cat/other.png", "test/dog/y_q90.jpg");
        REQUIRE(y != nullptr);
        CHECK(std::find(pl.begin(), pl.end(),
                        "near\t" + std::to_string(y->distance) + "\t0\tcat\ttrain/cat/other.png\t1\tdog\ttest/dog/y_q90.jpg") !=
              pl.end());

        const auto gl = read_lines(groups);
        std::vector<std::vector<std::string>> rows;
        for (const auto& l : gl)
            if (!l.empty() && l[0] != '#') rows.push_back(split(l, '\t'));
        REQUIRE(rows.size() == 4);
        for (const auto& row : rows) {
            REQUIRE(row.size() == 3);
            CHECK(row[0] == "pixels");
            CHECK(row[1].size() == 32);
        }
        CHECK(rows[0][2] == "train/cat/base.png,train/cat/copy_named.jpg");
        CHECK(rows[3][2] == "train/cat/w.png,train/dog/w.png");
        CHECK(gl[0][0] == '#');
    }
}

TEST_CASE("audit: the report does not depend on the thread count or the order of the entries") {
    const Planted p;
    const int saved = omp_get_max_threads();
    omp_set_num_threads(1);
    const AuditReport one = audit_images(p.entries());
    omp_set_num_threads(3);
    auto reversed = p.entries();
    std::reverse(reversed.begin(), reversed.end());
    const AuditReport three = audit_images(reversed);
    omp_set_num_threads(saved);
    REQUIRE(one.pairs.size() == three.pairs.size());
    REQUIRE(one.pairs.size() > 20);
    for (size_t k = 0; k < one.pairs.size(); ++k) {
        CHECK(one.pairs[k].a == three.pairs[k].a);
        CHECK(one.pairs[k].b == three.pairs[k].b);
        CHECK(one.pairs[k].kind == three.pairs[k].kind);
        CHECK(one.pairs[k].distance == three.pairs[k].distance);
        CHECK(one.pairs[k].rms == three.pairs[k].rms);
    }
    REQUIRE(one.groups.size() == three.groups.size());
    for (size_t k = 0; k < one.groups.size(); ++k) CHECK(one.groups[k].members == three.groups[k].members);
    for (size_t i = 0; i < one.images.size(); ++i) CHECK(one.images[i].phash == three.images[i].phash);
}

TEST_SUITE("fixture") {
    TEST_CASE("audit of the real Training folder: the shared duplicate list, merged to pixel level, exactly") {
        const std::string root = std::string(TLCPU_SHARED_DIR) + "/data/brain-tumor-mri";
        const AuditReport r = audit_images(audit_entries(root + "/Training"));
        CHECK(r.entries.size() == 5712);
        CHECK(r.unreadable.empty());
        size_t png = 0, gray = 0, colour = 0;
        for (const auto& im : r.images) png += im.format == "png", gray += im.gray_encoded(), colour += !im.gray_encoded();
        CHECK(png == 5);
        CHECK(gray == 2472);  // the README's channel counts
        CHECK(colour == 3240);

        // DUPLICATES_TRAINING.tsv lists byte-identical groups (sha256) and pixel-identical
        // ones that are not all byte-identical; joined, they are the pixel-level partition.
        std::map<std::string, std::string> parent;
        auto find = [&](std::string x) {
            while (parent.count(x) && parent[x] != x) x = parent[x];
            return x;
        };
        size_t sha_groups = 0, sha_copies = 0;
        for (const auto& line : read_lines(root + "/DUPLICATES_TRAINING.tsv")) {
            if (line.empty() || line[0] == '#') continue;
            const auto f = split(line, '\t');
            REQUIRE(f.size() == 3);
            const auto files = split(f[2], ',');
            if (f[0] == "sha256") ++sha_groups, sha_copies += files.size() - 1;
            for (const auto& file : files) parent.try_emplace(file, file);
            for (const auto& file : files) parent[find(file)] = find(files[0]);
        }
        CHECK(sha_groups == 148);
        CHECK(sha_copies == 191);
        std::map<std::string, std::set<std::string>> merged;
        for (const auto& [file, _] : parent) merged[find(file)].insert(file);
        std::set<std::set<std::string>> expected, found;
        for (const auto& [_, g] : merged) expected.insert(g);
        for (const auto& g : r.groups) {
            std::set<std::string> s;
            for (size_t m : g.members) s.insert(r.entries[m].name);
            found.insert(s);
        }
        CHECK(expected.size() == 155);
        CHECK(found == expected);
        CHECK(r.groups.size() == 155);
        CHECK(r.redundant_within[0] == 207);
        CHECK(r.conflict_groups == 0);
        CHECK(r.per_class.at({0, "notumor"}).redundant == 189);
        CHECK(r.per_class.at({0, "glioma"}).redundant == 0);
        // at the default bounds, no near duplicate crosses a class either
        CHECK(r.conflict_pairs_near == 0);
        CHECK(r.near_pairs_within[0] > 1000);
    }
}

}  // namespace tlcpu_test_audit

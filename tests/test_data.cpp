// The data pipeline: scanning a class-folder data set, decoding every format and failure
// the real data has (written here with stb_image_write, plus a hand-made one-component
// JPEG stb cannot write), resizing, validation splits and split files, duplicate lists,
// and the Keras-style augmentation warp with its fused preprocessing.
#include <doctest/doctest.h>
#include <stb_image_write.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <numbers>
#include <set>
#include <sstream>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "fixtures.hpp"
#include "tlcpu/data/augment.hpp"
#include "tlcpu/data/folder.hpp"

namespace tlcpu_test_data {

using namespace tlcpu;
using namespace tlcpu::data;
namespace fs = std::filesystem;

namespace {

using Bytes = std::vector<unsigned char>;

struct TempDir {
    fs::path path;
    explicit TempDir(const std::string& tag)
        : path(fs::temp_directory_path() / ("tlcpu-data-test-" + tag + "-" + std::to_string(::getpid()))) {
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

void append(void* ctx, void* data, int n) {
    auto* b = static_cast<Bytes*>(ctx);
    b->insert(b->end(), static_cast<unsigned char*>(data), static_cast<unsigned char*>(data) + n);
}
Bytes png_bytes(int w, int h, int comp, const Bytes& px) {
    Bytes b;
    REQUIRE(stbi_write_png_to_func(append, &b, w, h, comp, px.data(), w * comp));
    return b;
}
Bytes jpg_bytes(int w, int h, int comp, const Bytes& px) {
    Bytes b;
    REQUIRE(stbi_write_jpg_to_func(append, &b, w, h, comp, px.data(), 100));
    return b;
}
Bytes bmp_bytes(int w, int h, int comp, const Bytes& px) {
    Bytes b;
    REQUIRE(stbi_write_bmp_to_func(append, &b, w, h, comp, px.data()));
    return b;
}
void write_file(const fs::path& p, const Bytes& b) {
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}
void write_text(const fs::path& p, const std::string& s) {
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << s;
}

// Distinct, non-smooth values: any misplaced pixel or channel shows.
Bytes pattern(int w, int h, int comp, int seed) {
    Bytes b(size_t(w) * h * comp);
    for (int r = 0; r < h; ++r)
        for (int c = 0; c < w; ++c)
            for (int k = 0; k < comp; ++k)
                b[(size_t(r) * w + c) * comp + k] = uint8_t((r * 31 + c * 17 + k * 71 + seed * 13) % 256);
    return b;
}
// Smooth, so a JPEG round trip stays close.
Bytes gradient(int w, int h, int comp) {
    Bytes b(size_t(w) * h * comp);
    for (int r = 0; r < h; ++r)
        for (int c = 0; c < w; ++c)
            for (int k = 0; k < comp; ++k) b[(size_t(r) * w + c) * comp + k] = uint8_t(40 + 8 * r + 6 * c + 30 * k);
    return b;
}
Bytes to_rgb(const Bytes& px, int comp) {  // what the decoder must make of it
    Bytes out;
    for (size_t i = 0; i < px.size(); i += size_t(comp))
        for (int k = 0; k < 3; ++k) out.push_back(comp >= 3 ? px[i + size_t(k)] : px[i]);
    return out;
}

// A baseline JPEG with ONE component (stb_image_write always writes three): 8x8, DC only,
// quantiser 1, DC coefficient 512, so every pixel is 512 / 8 + 128 = 192. Huffman tables
// hold a single 1-bit code each: DC category 10, AC end-of-block.
Bytes one_component_jpeg() {
    Bytes b = {0xFF, 0xD8, 0xFF, 0xDB, 0x00, 0x43, 0x00};
    b.insert(b.end(), 64, 1);                                               // DQT: all ones
    b.insert(b.end(), {0xFF, 0xC0, 0x00, 0x0B, 8, 0, 8, 0, 8, 1, 1, 0x11, 0});  // SOF0: 8x8, 1 component
    for (uint8_t table : {0x00, 0x10}) {                                    // DHT: DC 0, AC 0
        b.insert(b.end(), {0xFF, 0xC4, 0x00, 0x14, table, 1});
        b.insert(b.end(), 15, 0);
        b.push_back(table == 0x00 ? 0x0A : 0x00);
    }
    b.insert(b.end(), {0xFF, 0xDA, 0x00, 0x08, 1, 1, 0x00, 0, 63, 0});      // SOS
    // bits: 0 (DC cat 10) 1000000000 (+512) 0 (EOB), padded with ones: 0100 0000 0000 1111
    b.insert(b.end(), {0x40, 0x0F, 0xFF, 0xD9});
    return b;
}

using test::error_of;

std::vector<std::string> lines_of(std::FILE* f) {
    std::rewind(f);
    std::vector<std::string> out;
    char buf[4096];
    while (std::fgets(buf, sizeof buf, f)) out.emplace_back(buf);
    return out;
}

Bytes image_bytes(const DecodedSet& s, size_t i) {
    const uint8_t* p = s.image(i);
    return Bytes(p, p + size_t(s.size) * s.size * 3);
}

size_t find_file(const DecodedSet& s, const std::string& name) {
    for (size_t i = 0; i < s.files.size(); ++i)
        if (fs::path(s.files[i].path).filename() == name) return i;
    FAIL("not decoded: " << name);
    return 0;
}

int max_abs_diff(const Bytes& a, const Bytes& b) {
    REQUIRE(a.size() == b.size());
    int m = 0;
    for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(int(a[i]) - int(b[i])));
    return m;
}

// The data set of the format tests: three classes, every format, every failure.
struct FormatsFolder {
    TempDir dir{"formats"};
    Bytes gray = pattern(8, 8, 1, 1), gray_alpha = pattern(8, 8, 2, 2), rgb = pattern(8, 8, 3, 3),
          rgba = pattern(8, 8, 4, 4), smooth = gradient(8, 8, 3), smooth_gray = gradient(8, 8, 1);
    FormatsFolder() {
        const fs::path r = dir.path;
        write_file(r / "a_gray" / "gray.png", png_bytes(8, 8, 1, gray));
        write_file(r / "a_gray" / "gray_alpha.png", png_bytes(8, 8, 2, gray_alpha));
        write_file(r / "a_gray" / "gray1.jpg", one_component_jpeg());
        write_file(r / "a_gray" / "gray3.jpg", jpg_bytes(8, 8, 1, smooth_gray));
        write_file(r / "b_color" / "rgb.png", png_bytes(8, 8, 3, rgb));
        write_file(r / "b_color" / "rgba.png", png_bytes(8, 8, 4, rgba));
        write_file(r / "b_color" / "rgb.jpg", jpg_bytes(8, 8, 3, smooth));
        write_file(r / "b_color" / "rgb.bmp", bmp_bytes(8, 8, 3, rgb));
        write_file(r / "b_color" / "png_named.jpg", png_bytes(8, 8, 3, pattern(8, 8, 3, 5)));
        write_file(r / "c_mixed" / "good.png", png_bytes(8, 8, 3, pattern(8, 8, 3, 6)));
        Bytes jpg = jpg_bytes(16, 16, 3, pattern(16, 16, 3, 7));
        size_t sos = 2;
        while (!(jpg[sos] == 0xFF && jpg[sos + 1] == 0xDA)) ++sos;
        Bytes corrupt(jpg.begin(), jpg.begin() + long(sos) + 14);  // every header intact, then garbage
        for (int i = 0; i < 300; ++i) corrupt.push_back(uint8_t(i * 37 + 11));
        write_file(r / "c_mixed" / "corrupt.jpg", corrupt);
        Bytes png = png_bytes(16, 16, 3, pattern(16, 16, 3, 8));
        write_file(r / "c_mixed" / "truncated.png", Bytes(png.begin(), png.begin() + long(png.size() / 2)));
        write_file(r / "c_mixed" / "zero.jpg", {});
        write_text(r / "c_mixed" / "text.jpg", "this is not an image\n");
        write_file(r / "c_mixed" / ".hidden.png", png_bytes(8, 8, 3, rgb));   // ignored
        write_file(r / "c_mixed" / "nested" / "inner.png", png_bytes(8, 8, 3, rgb));  // ignored
        write_text(r / "notes.txt", "files beside the class folders are ignored\n");
        fs::create_directories(r / ".cache" / "x");                           // hidden: not a class
        write_file(r / ".cache" / "x" / "y.png", png_bytes(8, 8, 3, rgb));
    }
};

DecodedSet decode_quiet(const ImageFolder& f, DecodeOptions o) {
    o.warnings = nullptr;
    return decode_folder(f, o);
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Scanning and decoding

TEST_CASE("scan: sorted class folders are labels, sorted files, hidden and stray entries ignored") {
    FormatsFolder ff;
    ImageFolder f = ImageFolder::scan(ff.dir.path);
    CHECK(f.classes == std::vector<std::string>{"a_gray", "b_color", "c_mixed"});
    std::vector<std::string> names;
    std::vector<int> labels;
    for (const auto& e : f.files) {
        names.push_back(fs::path(e.path).filename().string());
        labels.push_back(e.label);
        CHECK(fs::path(e.path).parent_path() == ff.dir.path / f.classes[size_t(e.label)]);
    }
    CHECK(names == std::vector<std::string>{"gray.png", "gray1.jpg", "gray3.jpg", "gray_alpha.png",
                                            "png_named.jpg", "rgb.bmp", "rgb.jpg", "rgb.png", "rgba.png",
                                            "corrupt.jpg", "good.png", "text.jpg", "truncated.png", "zero.jpg"});
    CHECK(labels == std::vector<int>{0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2});
}

TEST_CASE("decode: every format by content, gray and alpha to RGB, the channel count reported") {
    FormatsFolder ff;
    const fs::path r = ff.dir.path;
    auto channels = [&](const fs::path& p) {
        Image im;
        CHECK(try_decode_image(p.string(), im) == "");
        return im.channels;
    };
    CHECK(channels(r / "a_gray" / "gray.png") == 1);
    CHECK(channels(r / "a_gray" / "gray_alpha.png") == 2);
    CHECK(channels(r / "a_gray" / "gray1.jpg") == 1);
    CHECK(channels(r / "a_gray" / "gray3.jpg") == 3);  // stb writes gray JPEGs as YCbCr
    CHECK(channels(r / "b_color" / "rgba.png") == 4);
    CHECK(channels(r / "b_color" / "rgb.bmp") == 3);
    CHECK(channels(r / "b_color" / "png_named.jpg") == 3);

    DecodedSet s = decode_quiet(ImageFolder::scan(r), {.size = 8});
    REQUIRE(s.files.size() == 10);
    CHECK(s.size == 8);
    CHECK(s.bytes() == 10 * 8 * 8 * 3);
    CHECK(s.pixels.size() == s.bytes());
    // lossless formats at their own size: exact
    CHECK(image_bytes(s, find_file(s, "gray.png")) == to_rgb(ff.gray, 1));
    CHECK(image_bytes(s, find_file(s, "gray_alpha.png")) == to_rgb(ff.gray_alpha, 2));
    CHECK(image_bytes(s, find_file(s, "rgb.png")) == ff.rgb);
    CHECK(image_bytes(s, find_file(s, "rgba.png")) == to_rgb(ff.rgba, 4));
    CHECK(image_bytes(s, find_file(s, "rgb.bmp")) == ff.rgb);
    CHECK(image_bytes(s, find_file(s, "png_named.jpg")) == pattern(8, 8, 3, 5));
    CHECK(image_bytes(s, find_file(s, "gray1.jpg")) == Bytes(8 * 8 * 3, 192));
    CHECK(image_bytes(s, find_file(s, "good.png")) == pattern(8, 8, 3, 6));  // after a skipped file
    // lossy: close, and gray stays gray
    CHECK(max_abs_diff(image_bytes(s, find_file(s, "rgb.jpg")), ff.smooth) <= 6);
    const Bytes g3 = image_bytes(s, find_file(s, "gray3.jpg"));
    CHECK(max_abs_diff(g3, to_rgb(ff.smooth_gray, 1)) <= 6);
    for (size_t i = 0; i < g3.size(); i += 3) CHECK((g3[i] == g3[i + 1] && g3[i] == g3[i + 2]));
}

TEST_CASE("decode: unreadable files are skipped with one warning line each, or an error when strict") {
    FormatsFolder ff;
    ImageFolder f = ImageFolder::scan(ff.dir.path);
    std::FILE* warn = std::tmpfile();
    REQUIRE(warn);
    DecodedSet s = decode_folder(f, {.size = 8, .warnings = warn});
    const std::vector<std::string> bad = {"corrupt.jpg", "text.jpg", "truncated.png", "zero.jpg"};
    REQUIRE(s.skipped.size() == bad.size());
    for (size_t i = 0; i < bad.size(); ++i) {
        CHECK(s.skipped[i].first == (ff.dir.path / "c_mixed" / bad[i]).string());
        CHECK(!s.skipped[i].second.empty());
    }
    CHECK(s.skipped[3].second == "the file is empty");
    CHECK(s.skipped[1].second.find("not a decodable image") != std::string::npos);
    CHECK(s.files.size() == f.files.size() - bad.size());
    for (const auto& e : s.files) CHECK(fs::path(e.path).filename() != "corrupt.jpg");
    CHECK(s.excluded == 0);
    const auto lines = lines_of(warn);
    std::fclose(warn);
    REQUIRE(lines.size() == bad.size());  // and nothing else
    for (size_t i = 0; i < bad.size(); ++i) {
        CHECK(lines[i].find((ff.dir.path / "c_mixed" / bad[i]).string()) != std::string::npos);
        CHECK(lines[i].find("warning") != std::string::npos);
    }

    const std::string e = error_of([&] { decode_folder(f, {.size = 8, .strict = true, .warnings = nullptr}); });
    CHECK(e.find((ff.dir.path / "c_mixed" / "corrupt.jpg").string()) != std::string::npos);
    CHECK(e.find("3 more") != std::string::npos);
}

TEST_CASE("decode: an image over the pixel limit is refused from its header, before decoding") {
    TempDir d("pixel-limit");
    // A 33-byte PNG that declares a 10000 x 10000 RGB canvas (300 MB decoded) and holds no pixels.
    Bytes bomb = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n', 0, 0, 0, 13, 'I', 'H', 'D', 'R',
                  0, 0, 0x27, 0x10, 0, 0, 0x27, 0x10, 8, 2, 0, 0, 0, 0, 0, 0, 0};
    write_file(d.path / "bomb.png", bomb);
    Image im;
    CHECK(try_decode_image((d.path / "bomb.png").string(), im) ==
          "10000x10000 pixels is over the limit of 89478485 (tlcpu::max_image_pixels); refused before decoding");
    CHECK(im.rgb.empty());
    // The same check on a real image, with the limit lowered below its 64 x 64 pixels.
    write_file(d.path / "real.png", png_bytes(64, 64, 3, pattern(64, 64, 3, 9)));
    const int64_t saved = max_image_pixels;
    max_image_pixels = 4095;
    const std::string why = try_decode_image((d.path / "real.png").string(), im);
    max_image_pixels = saved;
    CHECK(why == "64x64 pixels is over the limit of 4095 (tlcpu::max_image_pixels); refused before decoding");
    CHECK(try_decode_image((d.path / "real.png").string(), im).empty());
    CHECK((im.width == 64 && im.height == 64));
}

TEST_CASE("decode: a folder over the memory cap is refused before decoding, with the numbers") {
    FormatsFolder ff;
    ImageFolder f = ImageFolder::scan(ff.dir.path);
    const uint64_t need = uint64_t(f.files.size()) * 512 * 512 * 3;
    char want[128];
    std::snprintf(want, sizeof want, "decoding %zu images at 512x512 needs %.1f MB, over the cap of %.1f MB", f.files.size(),
                  double(need) / (1 << 20), double(need - 1) / (1 << 20));
    CHECK_THROWS_WITH_AS(decode_folder(f, {.size = 512, .warnings = nullptr, .max_bytes = need - 1}),
                         doctest::Contains(want), tlcpu::Error);
    CHECK(decode_folder(f, {.size = 8, .warnings = nullptr, .max_bytes = need}).files.size() > 0);
}

TEST_CASE("decode: the result does not depend on the thread count") {
#ifdef _OPENMP
    FormatsFolder ff;
    ImageFolder f = ImageFolder::scan(ff.dir.path);
    const int before = omp_get_max_threads();
    omp_set_num_threads(1);
    DecodedSet one = decode_quiet(f, {.size = 6});
    omp_set_num_threads(4);
    DecodedSet four = decode_quiet(f, {.size = 6});
    omp_set_num_threads(before);
    CHECK(one.pixels == four.pixels);
    REQUIRE(one.files.size() == four.files.size());
    for (size_t i = 0; i < one.files.size(); ++i) CHECK(one.files[i].path == four.files[i].path);
    CHECK(one.skipped == four.skipped);
#else
    MESSAGE("built without OpenMP: nothing to compare");
#endif
}

TEST_CASE("decode: an exclusion list skips files by class/file, counted and unread") {
    FormatsFolder ff;
    ImageFolder f = ImageFolder::scan(ff.dir.path);
    DecodedSet s =
        decode_quiet(f, {.size = 8, .exclude = {"b_color/rgb.bmp", "Training/c_mixed/zero.jpg", "a_gray/absent.png"}});
    CHECK(s.excluded == 2);  // any path matches by its last two components; absent.png matches nothing
    for (const auto& e : s.files) CHECK(fs::path(e.path).filename() != "rgb.bmp");
    CHECK(s.files.size() == 9);
    CHECK(s.skipped.size() == 3);  // an excluded file is never read, so never "unreadable"
    DecodedSet t = decode_quiet(f, {.size = 8, .exclude = {"other_root/rgb.bmp"}});
    CHECK(t.excluded == 0);        // the class folder is part of the key
    CHECK(t.skipped.size() == 4);
}

TEST_CASE("scan and decode errors name the folder at fault") {
    TempDir d("errors");
    std::string e = error_of([&] { ImageFolder::scan(d.path / "missing"); });
    CHECK(e.find((d.path / "missing").string()) != std::string::npos);
    CHECK(e.find("no such folder") != std::string::npos);

    write_text(d.path / "plain.txt", "x");
    e = error_of([&] { ImageFolder::scan(d.path / "plain.txt"); });
    CHECK(e.find("not a directory") != std::string::npos);

    write_text(d.path / "flat" / "a.png", "x");
    fs::create_directories(d.path / "flat" / ".hidden");
    e = error_of([&] { ImageFolder::scan(d.path / "flat"); });
    CHECK(e.find((d.path / "flat").string()) != std::string::npos);
    CHECK(e.find("no class subfolders") != std::string::npos);

    write_file(d.path / "ds" / "cats" / "a.png", png_bytes(4, 4, 3, pattern(4, 4, 3, 1)));
    fs::create_directories(d.path / "ds" / "dogs");
    write_text(d.path / "ds" / "dogs" / ".DS_Store", "x");
    e = error_of([&] { ImageFolder::scan(d.path / "ds"); });
    CHECK(e.find((d.path / "ds" / "dogs").string()) != std::string::npos);
    CHECK(e.find("no files") != std::string::npos);

    write_text(d.path / "ds" / "dogs" / "broken.jpg", "not a jpeg");
    ImageFolder f = ImageFolder::scan(d.path / "ds");
    e = error_of([&] { decode_quiet(f, {.size = 4}); });
    CHECK(e.find((d.path / "ds" / "dogs").string()) != std::string::npos);
    CHECK(e.find("no readable image") != std::string::npos);
    CHECK(e.find("1 unreadable") != std::string::npos);

    write_file(d.path / "ds" / "dogs" / "b.png", png_bytes(4, 4, 3, pattern(4, 4, 3, 2)));
    f = ImageFolder::scan(d.path / "ds");
    CHECK(decode_quiet(f, {.size = 4}).files.size() == 2);
    e = error_of([&] { decode_quiet(f, {.size = 4, .exclude = {"dogs/b.png"}}); });
    CHECK(e.find((d.path / "ds" / "dogs").string()) != std::string::npos);
    CHECK(e.find("1 excluded") != std::string::npos);
}

TEST_CASE("resize: nearest picks PIL's source pixels; antialias leaves an axis at its size untouched") {
    Image im{16, 12, pattern(16, 12, 3, 0)};
    for (int y = 0; y < 12; ++y)
        for (int x = 0; x < 16; ++x) {
            im.rgb[size_t(y * 16 + x) * 3] = uint8_t(x);
            im.rgb[size_t(y * 16 + x) * 3 + 1] = uint8_t(y);
        }
    Image n = resize_nearest(im, 8, 8);
    // PIL: source = floor((i + 0.5) * in / out): x 16->8 takes 1,3,..,15; y 12->8 takes 0,2,3,5,6,8,9,11
    const int ys[8] = {0, 2, 3, 5, 6, 8, 9, 11};
    for (int y = 0; y < 8; ++y)
        for (int x = 0; x < 8; ++x) {
            CHECK(n.rgb[size_t(y * 8 + x) * 3] == 2 * x + 1);
            CHECK(n.rgb[size_t(y * 8 + x) * 3 + 1] == ys[y]);
        }
    // PIL steps the centre by in/out in double: 7 -> 3 lands on x = 1.1666.., 3.5, 5.8333..
    Image m = resize_nearest(Image{7, 1, Bytes{0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6}}, 3, 1);
    CHECK(m.rgb == Bytes{1, 1, 1, 3, 3, 3, 5, 5, 5});

    // vertical stripes, 8 wide, 16 tall -> 8x8: columns must stay exactly as they were
    Image stripes{8, 16, Bytes(8 * 16 * 3)};
    for (int y = 0; y < 16; ++y)
        for (int x = 0; x < 8; ++x)
            for (int k = 0; k < 3; ++k) stripes.rgb[size_t(y * 8 + x) * 3 + size_t(k)] = uint8_t(x % 2 ? 250 : 5);
    Image a = resize(stripes, 8, 8);
    for (int y = 0; y < 8; ++y)
        for (int x = 0; x < 8; ++x) CHECK(a.rgb[size_t(y * 8 + x) * 3] == (x % 2 ? 250 : 5));
    Image same = resize(im, 16, 12);
    CHECK(same.rgb == im.rgb);
    Image flat = resize(Image{40, 30, Bytes(40 * 30 * 3, 77)}, 9, 7);
    CHECK(flat.rgb == Bytes(9 * 7 * 3, 77));
}

TEST_CASE("decode: the resize mode is applied per image") {
    TempDir d("resize");
    Bytes big = pattern(16, 16, 3, 9);
    write_file(d.path / "c" / "big.png", png_bytes(16, 16, 3, big));
    ImageFolder f = ImageFolder::scan(d.path);
    DecodedSet n = decode_quiet(f, {.size = 8, .resize = Resize::nearest});
    DecodedSet a = decode_quiet(f, {.size = 8});
    CHECK(image_bytes(n, 0) == resize_nearest(Image{16, 16, big}, 8, 8).rgb);
    CHECK(image_bytes(a, 0) == resize(Image{16, 16, big}, 8, 8).rgb);
    CHECK(image_bytes(a, 0) != image_bytes(n, 0));
}

// ---------------------------------------------------------------------------------------
// Splits

namespace {

std::vector<FileEntry> synthetic(const std::vector<int>& per_class) {
    std::vector<FileEntry> v;
    for (size_t c = 0; c < per_class.size(); ++c)
        for (int i = 0; i < per_class[c]; ++i) {
            char name[64];
            std::snprintf(name, sizeof name, "/data/c%zu/img_%04d.jpg", c, i);
            v.push_back({name, int(c)});
        }
    return v;
}

std::vector<int64_t> per_class_count(const std::vector<FileEntry>& files, const std::vector<int64_t>& idx, int k) {
    std::vector<int64_t> n(size_t(k), 0);
    for (int64_t i : idx) ++n[size_t(files[size_t(i)].label)];
    return n;
}

void check_partition(const Split& s, size_t n) {
    std::vector<int> seen(n, 0);
    for (int64_t i : s.train) ++seen[size_t(i)];
    for (int64_t i : s.val) ++seen[size_t(i)];
    for (size_t i = 0; i < n; ++i) CHECK(seen[i] == 1);
    CHECK(std::is_sorted(s.train.begin(), s.train.end()));
    CHECK(std::is_sorted(s.val.begin(), s.val.end()));
}

std::set<std::string> val_keys(const std::vector<FileEntry>& files, const Split& s, int label) {
    std::set<std::string> k;
    for (int64_t i : s.val)
        if (files[size_t(i)].label == label) k.insert(class_file_key(files[size_t(i)].path));
    return k;
}

}  // namespace

TEST_CASE("stratified split: round(f * n) per class, a partition, seeded, stable per class") {
    auto files = synthetic({10, 7, 3, 1, 5, 100});
    Split s = split_stratified(files, 6, 0.2, 42);
    check_partition(s, files.size());
    // 2.0, 1.4, 0.6, 0.2, 1.0, 20.0 rounded
    CHECK(per_class_count(files, s.val, 6) == std::vector<int64_t>{2, 1, 1, 0, 1, 20});
    CHECK(per_class_count(files, split_stratified(files, 6, 0.5, 42).val, 6) ==
          std::vector<int64_t>{5, 4, 2, 1, 3, 50});  // halves round away from zero

    Split again = split_stratified(files, 6, 0.2, 42);
    CHECK(again.val == s.val);
    CHECK(again.train == s.train);
    CHECK(split_stratified(files, 6, 0.2, 43).val != s.val);
    // not simply the first files of each class
    CHECK(val_keys(files, s, 5) != val_keys(files, split_keras(files, 6, 0.2), 5));

    // dropping other classes' files (an exclusion list, say) leaves class 5's choice alone
    std::vector<FileEntry> fewer;
    for (const auto& e : files)
        if (e.label == 5 || e.path.find("img_0000") == std::string::npos) fewer.push_back(e);
    REQUIRE(fewer.size() < files.size());
    CHECK(val_keys(fewer, split_stratified(fewer, 6, 0.2, 42), 5) == val_keys(files, s, 5));

    CHECK(split_stratified(files, 6, 0.0, 1).val.empty());
    CHECK(split_stratified(files, 6, 1.0, 1).train.empty());
    CHECK(error_of([&] { split_stratified(files, 6, 1.5, 1); }).find("fraction") != std::string::npos);
    CHECK(error_of([&] { split_stratified(files, 5, 0.2, 1); }).find("label 5") != std::string::npos);
}

TEST_CASE("Keras split: the first int(f * n) files of each class, truncated like Python's int()") {
    auto files = synthetic({10, 7, 3});
    Split s = split_keras(files, 3, 0.2);
    check_partition(s, files.size());
    CHECK(s.val == std::vector<int64_t>{0, 1, 10});  // 2 of 10, int(1.4) = 1 of 7, int(0.6) = 0 of 3
    // 0.29 * 100 is 28.999999999999996 in doubles: Keras takes 28, rounding would give 29
    auto hundred = synthetic({100});
    Split k = split_keras(hundred, 1, 0.29);
    REQUIRE(k.val.size() == 28);
    for (size_t i = 0; i < 28; ++i) CHECK(k.val[i] == int64_t(i));
    CHECK(split_stratified(hundred, 1, 0.29, 0).val.size() == 29);
}

TEST_CASE("split TSV: write, read back, apply to the files again") {
    TempDir d("tsv");
    DecodedSet set;
    set.size = 2;
    set.classes = {"cats", "dogs"};
    const fs::path root = d.path / "data";
    for (int i = 0; i < 6; ++i)
        set.files.push_back({(root / (i < 4 ? "cats" : "dogs") / ("f" + std::to_string(i) + ".jpg")).string(),
                             i < 4 ? 0 : 1});
    Split s = split_stratified(set.files, 2, 0.5, 7);
    const std::string path = (d.path / "split.tsv").string();
    write_split_tsv(path, set, s, root);

    std::ifstream in(path);
    std::string header;
    std::getline(in, header);
    CHECK(header == "file\tclass\tsubset");
    auto m = read_split_tsv(path);
    REQUIRE(m.size() == 6);
    for (int64_t i : s.val) CHECK(m.at(class_file_key(set.files[size_t(i)].path)) == "val");
    for (int64_t i : s.train) CHECK(m.at(class_file_key(set.files[size_t(i)].path)) == "train");
    Split back = apply_split(m, set.files, root);
    CHECK(back.train == s.train);
    CHECK(back.val == s.val);

    // A resume's split must be the run's: the same one passes, any other fails saying how.
    CHECK_NOTHROW(check_same_split(path, set, s, root, "resume as it ran"));
    auto differs = [&](const Split& other) { return error_of([&] { check_same_split(path, set, other, root, "resume as it ran"); }); };
    Split swapped = s, fewer = s;
    std::swap(swapped.train.front(), swapped.val.front());
    fewer.train.pop_back();
    const std::string moved = differs(swapped);
    CHECK(moved.find(path + ": this call carves another split than the run did (files in the other subset: 2, new: 0, gone: 0)") !=
          std::string::npos);
    CHECK(moved.ends_with("; resume as it ran"));
    CHECK(differs(fewer).find(path + ": the data folder's images changed since the run began (files in the other subset: 0, new: 0, "
                                     "gone: 1)") != std::string::npos);

    set.files.push_back({(root / "dogs" / "new.jpg").string(), 1});
    CHECK(error_of([&] { apply_split(m, set.files, root); }).find("new.jpg") != std::string::npos);
    Split more = s;
    more.train.push_back(6);
    CHECK(differs(more).find("images changed since the run began (files in the other subset: 0, new: 1, gone: 0)") != std::string::npos);
    CHECK(error_of([&] { write_split_tsv(path, set, s, d.path / "elsewhere"); }).find("not under") !=
          std::string::npos);
    CHECK(error_of([&] { write_split_tsv(path, set, Split{{0, 1}, {1}}, root); }).find("twice") != std::string::npos);

    write_text(d.path / "bad.tsv", "file\tclass\tsubset\ncats/a.jpg\tcats\ttrain\ncats/b.jpg\tcats\ttest\n");
    std::string e = error_of([&] { read_split_tsv((d.path / "bad.tsv").string()); });
    CHECK(e.find("line 3") != std::string::npos);
    CHECK(e.find("test") != std::string::npos);
    write_text(d.path / "noheader.tsv", "cats/a.jpg\tcats\ttrain\n");
    CHECK(error_of([&] { read_split_tsv((d.path / "noheader.tsv").string()); }).find("header") != std::string::npos);
}

// ---------------------------------------------------------------------------------------
// Exclusion lists

TEST_CASE("exclusion list: all but the first of each group, single paths, keys by class/file") {
    CHECK(class_file_key("Training/meningioma/Tr-me_0281.jpg") == "meningioma/Tr-me_0281.jpg");
    CHECK(class_file_key("/abs/root/x/y.jpg") == "x/y.jpg");
    CHECK(class_file_key("y.jpg") == "y.jpg");

    TempDir d("exclude");
    const fs::path p = d.path / "dups.tsv";
    write_text(p, "# kind\tkey\tfiles\n"
                  "sha256\tk1\tTraining/a/x1.jpg,Training/a/x2.jpg,Training/a/x3.jpg\r\n"
                  "pixels\tk2\tTraining/b/y1.jpg,Training/b/y2.jpg\n"
                  "\n"
                  "/some/where/c/z.jpg\n");
    CHECK(read_exclude_list(p.string()) == std::set<std::string>{"a/x2.jpg", "a/x3.jpg", "b/y2.jpg", "c/z.jpg"});
    CHECK(read_exclude_list(p.string(), {"sha256"}) == std::set<std::string>{"a/x2.jpg", "a/x3.jpg", "c/z.jpg"});

    write_text(p, "sha256\tk1\tTraining/a/x1.jpg,Training/a/x2.jpg\nsha256\tk2\n");
    std::string e = error_of([&] { read_exclude_list(p.string()); });
    CHECK(e.find(p.string()) != std::string::npos);
    CHECK(e.find("line 2") != std::string::npos);
    write_text(p, "sha256\tk1\tTraining/a/x1.jpg\n");
    CHECK(error_of([&] { read_exclude_list(p.string()); }).find("at least two") != std::string::npos);
    CHECK(error_of([&] { read_exclude_list((d.path / "none.tsv").string()); }).find("cannot open") !=
          std::string::npos);
}

// ---------------------------------------------------------------------------------------
// Augmentation

namespace {

constexpr int S = 8;

Bytes distinct_image() {  // every pixel different, channels different
    Bytes b(S * S * 3);
    for (int i = 0; i < S * S; ++i) {
        b[size_t(i) * 3] = uint8_t(i);
        b[size_t(i) * 3 + 1] = uint8_t(100 + i);
        b[size_t(i) * 3 + 2] = uint8_t(255 - i);
    }
    return b;
}
const uint8_t* px(const Bytes& b, int r, int c) { return &b[size_t(r * S + c) * 3]; }
bool same_pixel(const Bytes& a, int ra, int ca, const Bytes& b, int rb, int cb) {
    return std::equal(px(a, ra, ca), px(a, ra, ca) + 3, px(b, rb, cb));
}
Bytes warped(const Bytes& in, const AffineDraw& d) {
    Bytes out(in.size());
    warp(in.data(), S, d, out.data());
    return out;
}

}  // namespace

TEST_CASE("augment: no-op parameters, zoom 1 and full turns return the image exactly") {
    const Bytes im = distinct_image();
    AffineDraw none = draw(AugmentOptions{}, 1, 2, 3);
    CHECK(none.theta_deg == 0);
    CHECK(none.zx == 1);
    CHECK(none.zy == 1);
    CHECK(!none.flip);
    CHECK(warped(im, none) == im);
    CHECK(warped(im, AffineDraw{.zx = 1, .zy = 1}) == im);
    CHECK(warped(im, AffineDraw{.theta_deg = 360}) == im);  // through the general warp
    CHECK(warped(im, AffineDraw{.theta_deg = -720, .zx = 1.f, .zy = 1.f}) == im);
    CHECK(!AugmentOptions{}.any());
    CHECK(AugmentOptions{.zoom = 0.1f}.any());
}

TEST_CASE("augment: a flip mirrors columns, twice is the identity") {
    const Bytes im = distinct_image();
    const Bytes once = warped(im, AffineDraw{.flip = true});
    for (int r = 0; r < S; ++r)
        for (int c = 0; c < S; ++c) CHECK(same_pixel(once, r, c, im, r, S - 1 - c));
    CHECK(once != im);
    CHECK(warped(once, AffineDraw{.flip = true}) == im);
    CHECK(warped(im, AffineDraw{.theta_deg = 360, .flip = true}) == once);  // the general warp agrees
}

TEST_CASE("augment: 90 degrees turns the grid, corners go to the expected corners") {
    const Bytes im = distinct_image();
    const Bytes r90 = warped(im, AffineDraw{.theta_deg = 90});
    // Keras: input = c + R(theta) (output - c) in (row, col): out(r, c) = in(S-1-c, r)
    for (int r = 0; r < S; ++r)
        for (int c = 0; c < S; ++c) CHECK(same_pixel(r90, r, c, im, S - 1 - c, r));
    CHECK(same_pixel(r90, 0, S - 1, im, 0, 0));          // top-left -> top-right
    CHECK(same_pixel(r90, S - 1, S - 1, im, 0, S - 1));  // top-right -> bottom-right
    const Bytes r180 = warped(im, AffineDraw{.theta_deg = 180});
    for (int r = 0; r < S; ++r)
        for (int c = 0; c < S; ++c) CHECK(same_pixel(r180, r, c, im, S - 1 - r, S - 1 - c));
    CHECK(warped(r90, AffineDraw{.theta_deg = -90}) == im);
    // Keras flips after the warp: rotate 90 then mirror is the transpose (mirror first would
    // give the anti-transpose)
    const Bytes rf = warped(im, AffineDraw{.theta_deg = 90, .flip = true});
    for (int r = 0; r < S; ++r)
        for (int c = 0; c < S; ++c) CHECK(same_pixel(rf, r, c, im, c, r));
}

TEST_CASE("augment: shifts move a marked pixel by the expected amount; edges clamp (fill nearest)") {
    Bytes im(S * S * 3, 10);
    for (int c = 0; c < S; ++c) im[size_t((S - 1) * S + c) * 3] = 200;  // bottom row: red 200
    im[size_t(5 * S + 3) * 3 + 1] = 250;                                 // marker at (5, 3)
    // tx (Keras: drawn from height_shift_range) = 2 rows: input row = output row + 2
    const Bytes up = warped(im, AffineDraw{.tx = 2.f / S});
    CHECK(up[size_t(3 * S + 3) * 3 + 1] == 250);
    CHECK(up[size_t(5 * S + 3) * 3 + 1] == 10);
    for (int r = S - 3; r < S; ++r)  // rows 5, 6, 7 read input rows 7, 8 -> 7, 9 -> 7
        for (int c = 0; c < S; ++c) CHECK(up[size_t(r * S + c) * 3] == 200);
    // ty = -1 column: input col = output col - 1, so the marker moves right
    const Bytes right = warped(im, AffineDraw{.ty = -1.f / S});
    CHECK(right[size_t(5 * S + 4) * 3 + 1] == 250);
    CHECK(right[size_t(5 * S + 3) * 3 + 1] == 10);
    CHECK(std::equal(px(right, 2, 0), px(right, 2, 0) + 3, px(im, 2, 0)));  // column 0 clamps to itself
    // a fractional shift interpolates: half a row between 10 and 250
    const Bytes half = warped(im, AffineDraw{.tx = 0.5f / S});
    CHECK(half[size_t(4 * S + 3) * 3 + 1] == 130);
    CHECK(half[size_t(5 * S + 3) * 3 + 1] == 130);
}

TEST_CASE("augment: zoom scales about the centre, zx acts on rows, bilinear is exact on a ramp") {
    Bytes ramp(S * S * 3);  // value 10 * column in every channel
    for (int r = 0; r < S; ++r)
        for (int c = 0; c < S; ++c)
            for (int k = 0; k < 3; ++k) ramp[size_t(r * S + c) * 3 + size_t(k)] = uint8_t(10 * c);
    std::vector<float> out(3 * S * S);
    const std::array<float, 3> zero{0, 0, 0};
    // zy = 0.5 zooms in on columns: input col = 3.5 + 0.5 (c - 3.5), value 17.5 + 5c exactly
    augment_preprocess(ramp.data(), S, AffineDraw{.zx = 1, .zy = 0.5f}, Preprocess::caffe, zero, out.data());
    for (int r = 0; r < S; ++r)
        for (int c = 0; c < S; ++c) CHECK(out[size_t(r * S + c)] == 17.5f + 5.f * float(c));
    // zx acts on rows only: a column ramp does not change
    augment_preprocess(ramp.data(), S, AffineDraw{.zx = 0.5f, .zy = 1}, Preprocess::caffe, zero, out.data());
    for (int c = 0; c < S; ++c) CHECK(out[size_t(2 * S + c)] == 10.f * float(c));
    // zoom out by 2: input col = 3.5 + 2 (c - 3.5); outside [0, 7] clamps
    augment_preprocess(ramp.data(), S, AffineDraw{.zx = 1, .zy = 2}, Preprocess::caffe, zero, out.data());
    const float expect[S] = {0, 0, 5, 25, 45, 65, 70, 70};
    for (int c = 0; c < S; ++c) CHECK(out[size_t(S + c)] == expect[c]);
}

TEST_CASE("augment: random draws agree with a plain double-precision bilinear warp") {
    // The fixed-point sampler with its clamp-free interior against the formula written out.
    const int n = 37;
    Bytes im(size_t(n) * n * 3);
    for (size_t i = 0; i < im.size(); ++i) im[i] = uint8_t((i * 2654435761u) >> 24);
    const AugmentOptions o{
        .rotation = 40, .width_shift = 0.3f, .height_shift = 0.3f, .zoom = 0.4f, .horizontal_flip = true};
    int worst = 0;
    for (uint64_t i = 0; i < 40; ++i) {
        const AffineDraw d = draw(o, 11, 0, i);
        Bytes out(im.size());
        warp(im.data(), n, d, out.data());
        const double mid = (n - 1) / 2.0, th = d.theta_deg * std::numbers::pi / 180;
        for (int r = 0; r < n; ++r)
            for (int c = 0; c < n; ++c) {
                const double cc = d.flip ? n - 1 - c : c, ur = d.zx * (r - mid) + d.tx * n,
                             uc = d.zy * (cc - mid) + d.ty * n;
                const double y = std::clamp(mid + std::cos(th) * ur - std::sin(th) * uc, 0.0, n - 1.0);
                const double x = std::clamp(mid + std::sin(th) * ur + std::cos(th) * uc, 0.0, n - 1.0);
                const int y0 = int(y), x0 = int(x), y1 = std::min(y0 + 1, n - 1), x1 = std::min(x0 + 1, n - 1);
                for (int k = 0; k < 3; ++k) {
                    auto at = [&](int yy, int xx) { return double(im[(size_t(yy) * n + size_t(xx)) * 3 + size_t(k)]); };
                    const double top = at(y0, x0) + (x - x0) * (at(y0, x1) - at(y0, x0));
                    const double bot = at(y1, x0) + (x - x0) * (at(y1, x1) - at(y1, x0));
                    const double want = top + (y - y0) * (bot - top);
                    worst = std::max(worst, std::abs(int(out[(size_t(r) * n + size_t(c)) * 3 + size_t(k)]) -
                                                     int(std::lround(want))));
                }
            }
    }
    CHECK(worst <= 1);  // 11-bit weights: a rounding boundary may tip
}

TEST_CASE("augment: a draw depends only on (seed, epoch, index) and stays in range") {
    const AugmentOptions o{
        .rotation = 20, .width_shift = 0.1f, .height_shift = 0.2f, .zoom = 0.15f, .horizontal_flip = true};
    auto eq = [](const AffineDraw& a, const AffineDraw& b) {
        return a.theta_deg == b.theta_deg && a.tx == b.tx && a.ty == b.ty && a.zx == b.zx && a.zy == b.zy &&
               a.flip == b.flip;
    };
    CHECK(eq(draw(o, 5, 3, 17), draw(o, 5, 3, 17)));
    CHECK(!eq(draw(o, 5, 3, 17), draw(o, 5, 4, 17)));
    CHECK(!eq(draw(o, 5, 3, 17), draw(o, 5, 3, 18)));
    CHECK(!eq(draw(o, 5, 3, 17), draw(o, 6, 3, 17)));
    // each parameter has its own stream: turning the others off leaves the rotation alone
    CHECK(draw(AugmentOptions{.rotation = 20}, 5, 3, 17).theta_deg == draw(o, 5, 3, 17).theta_deg);

    float lo[5] = {1e9f, 1e9f, 1e9f, 1e9f, 1e9f}, hi[5] = {-1e9f, -1e9f, -1e9f, -1e9f, -1e9f};
    int flips = 0;
    const int n = 10000;
    for (int i = 0; i < n; ++i) {
        AffineDraw d = draw(o, 9, 1, uint64_t(i));
        const float v[5] = {d.theta_deg, d.tx, d.ty, d.zx, d.zy};
        for (int k = 0; k < 5; ++k) lo[k] = std::min(lo[k], v[k]), hi[k] = std::max(hi[k], v[k]);
        flips += d.flip;
    }
    const float want_lo[5] = {-20, -0.2f, -0.1f, 0.85f, 0.85f}, want_hi[5] = {20, 0.2f, 0.1f, 1.15f, 1.15f};
    for (int k = 0; k < 5; ++k) {
        CHECK(lo[k] >= want_lo[k]);
        CHECK(hi[k] <= want_hi[k]);
        const float span = want_hi[k] - want_lo[k];
        CHECK(lo[k] < want_lo[k] + 0.01f * span);  // the whole range is used
        CHECK(hi[k] > want_hi[k] - 0.01f * span);
    }
    CHECK(flips > 4700);  // 5000 +- 3 standard deviations
    CHECK(flips < 5300);
    CHECK(error_of([] { draw(AugmentOptions{.width_shift = 2}, 0, 0, 0); }).find("fractions") != std::string::npos);
}

TEST_CASE("preprocessing: caffe and torch on known pixels, identity path equals preprocess()") {
    Bytes rgb(S * S * 3, 0);
    rgb[0] = 200, rgb[1] = 100, rgb[2] = 50;   // pixel 0: R 200, G 100, B 50
    rgb[3] = 255, rgb[4] = 0, rgb[5] = 128;    // pixel 1
    const size_t hw = S * S;
    std::vector<float> out(3 * hw), ref(3 * hw);

    augment_preprocess(rgb.data(), S, AffineDraw{}, Preprocess::caffe, keras_caffe_mean_bgr, out.data());
    CHECK(out[0] == 50.f - 103.939f);            // plane 0 is blue
    CHECK(out[hw] == 100.f - 116.779f);
    CHECK(out[2 * hw] == 200.f - 123.68f);
    CHECK(out[0] == doctest::Approx(-53.939).epsilon(1e-6));
    CHECK(out[2 * hw + 1] == doctest::Approx(255 - 123.68).epsilon(1e-6));
    augment_preprocess(rgb.data(), S, AffineDraw{}, Preprocess::caffe, {1, 2, 3}, out.data());
    CHECK(out[0] == 49.f);
    CHECK(out[hw] == 98.f);
    CHECK(out[2 * hw] == 197.f);

    augment_preprocess(rgb.data(), S, AffineDraw{}, Preprocess::torch, keras_caffe_mean_bgr, out.data());
    CHECK(out[1] == doctest::Approx((1.0 - 0.485) / 0.229).epsilon(1e-6));              // R 255
    CHECK(out[hw + 1] == doctest::Approx((0.0 - 0.456) / 0.224).epsilon(1e-6));         // G 0
    CHECK(out[2 * hw + 1] == doctest::Approx((128 / 255.0 - 0.406) / 0.225).epsilon(1e-6));  // B 128
    CHECK(out[1] == (255.f / 255.f - 0.485f) / 0.229f);

    const Bytes im = distinct_image();
    for (Preprocess mode : {Preprocess::caffe, Preprocess::torch}) {
        augment_preprocess(im.data(), S, AffineDraw{}, mode, keras_caffe_mean_bgr, out.data());
        preprocess(Image{S, S, im}, mode, ref.data());
        CHECK(out == ref);  // bit for bit
        // the general warp at a full turn: same values to float rounding
        augment_preprocess(im.data(), S, AffineDraw{.theta_deg = 360}, mode, keras_caffe_mean_bgr, out.data());
        double worst = 0;
        for (size_t i = 0; i < out.size(); ++i) worst = std::max(worst, double(std::abs(out[i] - ref[i])));
        CHECK(worst < 1e-4);
        // a flip through the straight path, bit for bit against preprocess() of the mirror
        augment_preprocess(im.data(), S, AffineDraw{.flip = true}, mode, keras_caffe_mean_bgr, out.data());
        preprocess(Image{S, S, warped(im, AffineDraw{.flip = true})}, mode, ref.data());
        CHECK(out == ref);
    }
}

// ---------------------------------------------------------------------------------------
// The real data set

TEST_SUITE("fixture") {

TEST_CASE("real duplicates list: 191 byte-identical copies, 207 with the decoded-pixel groups") {
    const std::string tsv = test::shared("data/brain-tumor-mri/DUPLICATES_TRAINING.tsv");
    const auto all = read_exclude_list(tsv), bytes = read_exclude_list(tsv, {"sha256"}),
               pixels = read_exclude_list(tsv, {"pixels"});
    CHECK(bytes.size() == 191);   // README: 5,712 files, 5,521 unique hashes
    CHECK(all.size() == 207);     // README: identical decoded pixels, 207 redundant copies
    CHECK(pixels.size() == 35);   // 16 groups; 19 of their copies are byte-identical too
    std::map<std::string, int> by_class;
    for (const auto& k : all) ++by_class[k.substr(0, k.find('/'))];
    CHECK(by_class == std::map<std::string, int>{{"meningioma", 6}, {"notumor", 189}, {"pituitary", 12}});
    by_class.clear();
    for (const auto& k : bytes) ++by_class[k.substr(0, k.find('/'))];
    CHECK(by_class == std::map<std::string, int>{{"meningioma", 6}, {"notumor", 173}, {"pituitary", 12}});

    // Groups overlap (a "pixels" group contains "sha256" ones), so a group's first file may be
    // excluded by another group. What must hold: each set of copies (groups joined where they
    // share a file) keeps exactly one file. The README counts 155 such sets.
    std::vector<std::set<std::string>> sets;
    std::ifstream in(tsv);
    std::string line;
    int groups = 0;
    while (std::getline(in, line)) {
        if (line.empty() || line[0] == '#') continue;
        std::set<std::string> g;
        std::stringstream ss(line.substr(line.rfind('\t') + 1));
        for (std::string f; std::getline(ss, f, ',');) g.insert(class_file_key(f));
        for (auto it = sets.begin(); it != sets.end();) {
            bool shares = false;
            for (const auto& f : *it) shares |= g.count(f) > 0;
            if (shares) {
                g.insert(it->begin(), it->end());
                it = sets.erase(it);
            } else {
                ++it;
            }
        }
        sets.push_back(std::move(g));
        ++groups;
    }
    CHECK(groups == 164);
    CHECK(sets.size() == 155);
    size_t members = 0;
    for (const auto& g : sets) {
        int kept = 0;
        for (const auto& f : g) kept += !all.count(f);
        CHECK(kept == 1);
        members += g.size();
    }
    CHECK(members - sets.size() == all.size());
    ImageFolder real = ImageFolder::scan(test::shared("data/brain-tumor-mri/Training"));
    std::set<std::string> keys;
    for (const auto& e : real.files) keys.insert(class_file_key(e.path));
    for (const auto& k : all) CHECK(keys.count(k) == 1);
}

TEST_CASE("real folder: 4 classes, 5,712 files; the splits' per-class sizes") {
    ImageFolder f = ImageFolder::scan(test::shared("data/brain-tumor-mri/Training"));
    CHECK(f.classes == std::vector<std::string>{"glioma", "meningioma", "notumor", "pituitary"});
    REQUIRE(f.files.size() == 5712);
    std::vector<int64_t> all(4, 0);
    for (const auto& e : f.files) ++all[size_t(e.label)];
    CHECK(all == std::vector<int64_t>{1321, 1339, 1595, 1457});
    CHECK(per_class_count(f.files, split_stratified(f.files, 4, 0.2, 0).val, 4) ==
          std::vector<int64_t>{264, 268, 319, 291});
    CHECK(per_class_count(f.files, split_keras(f.files, 4, 0.2).val, 4) == std::vector<int64_t>{264, 267, 319, 291});
    // Keras' first 20% by name: "Tr-glTr_*" sorts before "Tr-gl_*"
    CHECK(fs::path(f.files[size_t(split_keras(f.files, 4, 0.2).val[0])].path).filename() == "Tr-glTr_0000.jpg");
}

TEST_CASE("real files: the progressive JPEG, a gray JPEG and a PNG named .jpg decode") {
    const std::string root = test::shared("data/brain-tumor-mri/Training/");
    Image prog = decode_image(root + "notumor/Tr-no_0996.jpg");  // the one progressive JPEG
    CHECK(prog.width == 1024);
    CHECK(prog.height == 1024);
    CHECK(prog.channels == 1);
    Image gray = decode_image(root + "glioma/Tr-gl_0121.jpg");
    CHECK(gray.channels == 1);
    Image png = decode_image(root + "notumor/Tr-no_1005.jpg");
    CHECK(png.width == 1920);
    CHECK(png.height == 1080);
    CHECK(png.channels == 3);

    // the same files through decode_folder (linked into a small class folder)
    TempDir d("real");
    for (const char* rel : {"notumor/Tr-no_0996.jpg", "notumor/Tr-no_1005.jpg", "notumor/Tr-no_1011.jpg",
                            "glioma/Tr-gl_0121.jpg", "glioma/Tr-glTr_0000.jpg"}) {
        fs::create_directories(d.path / fs::path(rel).parent_path());
        fs::create_symlink(root + rel, d.path / rel);
    }
    DecodedSet s = decode_folder(ImageFolder::scan(d.path), {.size = 224});
    CHECK(s.skipped.empty());
    CHECK(s.files.size() == 5);
    CHECK(s.bytes() == 5u * 224 * 224 * 3);
    for (size_t i = 0; i < s.files.size(); ++i) {  // not blank
        const Bytes b = image_bytes(s, i);
        CHECK(*std::max_element(b.begin(), b.end()) > 100);
    }
}

}  // TEST_SUITE("fixture")

}  // namespace tlcpu_test_data

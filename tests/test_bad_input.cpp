// The bad-input matrix of the README ("Bad input and crashes"), the library's rows: each
// case is one row, and checks the exact message a user sees. The rows about train_cpu and
// evaluate (output folder, disk full, kills, class mismatch) are in tests/e2e_train.sh and
// tests/crash_drill.sh.
#include <doctest/doctest.h>
#include <stb_image_write.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "fixtures.hpp"
#include "tlcpu/data/loader.hpp"

namespace tlcpu_test_bad_input {

using namespace tlcpu;
using namespace tlcpu::data;
namespace fs = std::filesystem;
using test::error_of;

namespace {

using Bytes = std::vector<unsigned char>;

struct TempDir {
    fs::path path;
    explicit TempDir(const std::string& tag)
        : path(fs::temp_directory_path() / ("tlcpu-bad-input-" + tag + "-" + std::to_string(::getpid()))) {
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~TempDir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    std::string operator/(const std::string& rel) const { return (path / rel).string(); }
};

void write_file(const fs::path& p, const Bytes& b) {
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary).write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
}
Bytes read_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    return Bytes((std::istreambuf_iterator<char>(in)), {});
}
void append(void* ctx, void* data, int n) {
    auto* b = static_cast<Bytes*>(ctx);
    b->insert(b->end(), static_cast<unsigned char*>(data), static_cast<unsigned char*>(data) + n);
}
Bytes png(int w, int h, const Bytes& rgb) {
    Bytes b;
    REQUIRE(stbi_write_png_to_func(append, &b, w, h, 3, rgb.data(), w * 3));
    return b;
}
Bytes jpg(int w, int h, const Bytes& rgb) {
    Bytes b;
    REQUIRE(stbi_write_jpg_to_func(append, &b, w, h, 3, rgb.data(), 95));
    return b;
}
Bytes pattern(int w, int h) {
    Bytes b(size_t(w) * h * 3);
    for (size_t i = 0; i < b.size(); ++i) b[i] = uint8_t(i * 37 + 11);
    return b;
}

// Real files and fuzzer findings kept with the fuzz targets.
fs::path corpus(const std::string& rel) { return fs::path(TLCPU_TEST_DATA_DIR) / ".." / "fuzz" / rel; }

// What decode_folder prints for the files it skips, one line each.
std::vector<std::string> warnings_of(const ImageFolder& f, DecodeOptions o, DecodedSet* out = nullptr) {
    std::FILE* w = std::tmpfile();
    REQUIRE(w);
    o.warnings = w;
    DecodedSet s = decode_folder(f, o);
    if (out) *out = std::move(s);
    std::rewind(w);
    std::vector<std::string> lines;
    char buf[4096];
    while (std::fgets(buf, sizeof buf, w)) lines.emplace_back(buf);
    std::fclose(w);
    return lines;
}

}  // namespace

TEST_CASE("bad input: data folders") {
    TempDir d("folders");
    CHECK(error_of([&] { ImageFolder::scan(d / "missing"); }) == "tlcpu: " + d / "missing" + ": no such folder");
    write_file(d / "plain.txt", {'x'});
    CHECK(error_of([&] { ImageFolder::scan(d / "plain.txt"); }) == "tlcpu: " + d / "plain.txt" + ": not a directory");
    write_file(d / "flat/a.png", png(2, 2, pattern(2, 2)));
    CHECK(error_of([&] { ImageFolder::scan(d / "flat"); }) ==
          "tlcpu: " + d / "flat" + ": no class subfolders (expected one folder per class, e.g. " + d / "flat/<class>/<image>" + ")");
    write_file(d / "ds/cats/a.png", png(2, 2, pattern(2, 2)));
    fs::create_directories(d.path / "ds/dogs");
    CHECK(error_of([&] { ImageFolder::scan(d / "ds"); }) == "tlcpu: " + d / "ds/dogs" + ": class folder has no files");
    write_file(d / "ds/dogs/a.jpg", {'n', 'o'});
    const ImageFolder f = ImageFolder::scan(d / "ds");
    CHECK(error_of([&] { decode_folder(f, {.size = 4, .warnings = nullptr}); }) ==
          "tlcpu: " + d / "ds/dogs" + ": no readable image in this class folder (1 files: 1 unreadable, 0 excluded)");
}

TEST_CASE("bad input: image files are skipped with a warning naming them and why") {
    TempDir d("files");
    const auto put = [&](const std::string& name, const Bytes& b) { write_file(d.path / "c" / name, b); };
    put("good.png", png(8, 8, pattern(8, 8)));
    put("zero.jpg", {});
    const std::string text = "this is not an image\n";
    put("text.jpg", Bytes(text.begin(), text.end()));
    put("corrupt.jpg", read_file(corpus("corpus/image/corrupt_scan.jpg")));
    put("truncated.jpg", read_file(corpus("corpus/image/truncated.jpg")));
    put("truncated.png", read_file(corpus("corpus/image/truncated.png")));
    put("dht.jpg", read_file(corpus("regressions/image/jpeg_dht_257_codes.jpg")));  // fuzzer findings
    put("idat.png", read_file(corpus("regressions/image/png_idat_838860812_bytes.png")));
    put("dht_cut.jpg", read_file(corpus("regressions/image/jpeg_dht_cut_by_end_of_file.jpg")));
    put("huff256.jpg", read_file(corpus("regressions/image/jpeg_huffman_256_codes_of_9_bits.jpg")));
    put("undef_ac.jpg", read_file(corpus("regressions/image/jpeg_undefined_ac_table.jpg")));
    put("undef_q.jpg", read_file(corpus("regressions/image/jpeg_undefined_quant_table.jpg")));
    put("bomb.png", read_file(corpus("corpus/image/bomb_10000x10000.png")));
    put("targa.tga", read_file(corpus("corpus/image/rgba.tga")));
    const ImageFolder f = ImageFolder::scan(d.path);
    DecodedSet s;
    const auto lines = warnings_of(f, {.size = 8}, &s);
    const auto at = [&](const std::string& name) { return "tlcpu: warning: skipping " + d / ("c/" + name) + ": "; };
    CHECK(lines == std::vector<std::string>{
                       at("bomb.png") + "10000x10000 pixels is over the limit of 89478485 (tlcpu::max_image_pixels); "
                                        "refused before decoding\n",
                       at("corrupt.jpg") + "not a decodable image (bad huffman code)\n",
                       at("dht.jpg") + "not a decodable image (corrupt JPEG: a Huffman table of 344 codes (at most 256))\n",
                       at("dht_cut.jpg") + "not a decodable image (corrupt JPEG: a Huffman table of 1660 codes (at "
                                           "most 256))\n",
                       at("huff256.jpg") + "not a decodable image (a JPEG Huffman table of 256 codes none longer "
                                           "than 9 bits, which stb_image 2.27 decodes wrongly)\n",
                       at("idat.png") + "not a decodable image (truncated PNG: chunk 'IDAT' declares 838860812 bytes, the "
                                        "file holds 29 more)\n",
                       at("targa.tga") + "not a decodable image (not JPEG, PNG or BMP)\n",
                       at("text.jpg") + "not a decodable image (not JPEG, PNG or BMP)\n",
                       at("truncated.jpg") + "not a decodable image (truncated JPEG: no end-of-image marker after the last scan)\n",
                       at("truncated.png") + "not a decodable image (truncated PNG: chunk 'IDAT' declares 147 bytes, the "
                                             "file holds 61 more)\n",
                       at("undef_ac.jpg") + "not a decodable image (corrupt JPEG: a scan decodes with AC Huffman "
                                            "table 3, not defined before it)\n",
                       at("undef_q.jpg") + "not a decodable image (corrupt JPEG: a scan uses quantisation table 2, "
                                           "not defined before it)\n",
                       at("zero.jpg") + "the file is empty\n"});
    REQUIRE(s.files.size() == 1);
    CHECK(fs::path(s.files[0].path).filename() == "good.png");
    // strict: the first of them is the error
    CHECK(error_of([&] { decode_folder(f, {.size = 8, .strict = true, .warnings = nullptr}); }) ==
          "tlcpu: " + d / "c/bomb.png" + ": 10000x10000 pixels is over the limit of 89478485 (tlcpu::max_image_pixels); "
                                           "refused before decoding (and 12 more unreadable files)");

    // A file over the size limit is refused without being read whole (the limit lowered here).
    const int64_t saved = max_image_file_bytes;
    max_image_file_bytes = 100;
    Image im;
    const std::string r = try_decode_image(d / "c/good.png", im);
    max_image_file_bytes = saved;
    CHECK(r == "over 100 bytes (tlcpu::max_image_file_bytes); refused before reading the rest");
    CHECK(im.rgb.empty());
}

// The JPEG screens must not refuse what real encoders write: a progressive file's first DC
// scan names AC table 0 before any AC table is defined (it decodes no AC coefficient), and a
// DC refinement scan reads raw bits, no table. Both real progressive crops have such scans.
TEST_CASE("bad input: the JPEG table screens pass real baseline and progressive files") {
    for (const char* name : {"real_color_baseline.jpg", "real_progressive_crop.jpg", "real_color_progressive_crop.jpg",
                             "real_gray_1component_crop.jpg", "real_restart_crop.jpg"}) {
        CAPTURE(name);
        const Bytes b = read_file(corpus(std::string("corpus/image/") + name));
        CHECK(tlcpu::detail::jpeg_fault(b.data(), b.size()) == "");
        Image im;
        CHECK(try_decode_image_memory(b.data(), b.size(), im) == "");
        CHECK(im.width * im.height > 0);
    }
    // One table byte changed in the last: the third scan of the progressive file names AC
    // table 3, which the file never defines.
    Bytes b = read_file(corpus("corpus/image/real_progressive_crop.jpg"));
    REQUIRE(b[808] == 0xFF);
    REQUIRE(b[809] == 0xDA);
    b[814] = 0x03;
    CHECK(tlcpu::detail::jpeg_fault(b.data(), b.size()) == "corrupt JPEG: a scan decodes with AC Huffman table 3, not defined before it");
}

TEST_CASE("bad input: a 1x1 image is a valid image and fills the whole 224x224 input") {
    TempDir d("one-pixel");
    const Bytes px = {200, 100, 50};
    write_file(d / "c/one.png", png(1, 1, px));
    write_file(d / "c/one.jpg", jpg(1, 1, px));
    const ImageFolder f = ImageFolder::scan(d.path);
    for (Resize r : {Resize::antialias, Resize::nearest}) {
        DecodedSet s;
        CHECK(warnings_of(f, {.size = 224, .resize = r}, &s).empty());
        REQUIRE(s.files.size() == 2);
        CHECK(s.bytes() == 2u * 224 * 224 * 3);
        for (size_t i = 0; i < 2; ++i) {
            const bool is_png = fs::path(s.files[i].path).extension() == ".png";
            int worst = 0;  // PNG is exact; JPEG's chroma subsampling and rounding move it a little
            for (size_t k = 0; k < size_t(224) * 224 * 3; ++k)
                worst = std::max(worst, std::abs(int(s.image(i)[k]) - int(px[k % 3])));
            CHECK(worst <= (is_png ? 0 : 3));
        }
    }
}

TEST_CASE("bad input: weights of another architecture, or of the wrong shape, name every tensor at fault") {
    TempDir d("weights");
    auto net = std::make_unique<ResNet50<Layout::v1_5, 4>>();
    // A VGG-16's first and last layers, say: nothing the ResNet needs.
    Tensor conv({64, 3, 3, 3}, 0.1f), fc({1000, 4096}, 0.f);
    io::save_safetensors(d / "vgg.safetensors", {{"features.0.weight", &conv}, {"classifier.6.weight", &fc}});
    std::string want = "tlcpu: " + d / "vgg.safetensors" + ": ";
    int n = 0;
    std::string names;
    net->visit("", [&](const std::string& name, Param&) { names += "\n  " + name, ++n; });
    want += std::to_string(n) + " tensors the model needs are missing from the file:" + names +
            "\n(name the prefixes that may be freshly initialised, e.g. init_missing = {\"layer4.\", \"fc.\"})";
    CHECK(error_of([&] { load_weights(*net, io::SafeTensors::open(d / "vgg.safetensors")); }) == want);

    std::vector<Tensor> values;
    std::vector<std::string> order;
    net->visit("", [&](const std::string& name, Param& p) {
        values.push_back(name == "layer2.0.conv2.weight" ? Tensor({8, 8, 1, 3}) : p.value);
        order.push_back(name);
    });
    std::vector<std::pair<std::string, const Tensor*>> sd;
    for (size_t i = 0; i < order.size(); ++i) sd.push_back({order[i], &values[i]});
    io::save_safetensors(d / "shape.safetensors", sd);
    CHECK(error_of([&] { load_weights(*net, io::SafeTensors::open(d / "shape.safetensors")); }) ==
          "tlcpu: " + d / "shape.safetensors" +
              ": 1 tensors have the wrong shape for this model:\n  layer2.0.conv2.weight (file [8,8,1,3], model [8,8,3,3])");
}

TEST_CASE("bad input: a damaged or truncated checkpoint is an error naming it, never weights") {
    TempDir d("checkpoint");
    Tensor w({64}, 0.5f), b({4}, -1.f);
    const std::string path = d / "checkpoint.safetensors";
    io::save_safetensors(path, {{"w", &w}, {"b", &b}}, {{"epoch", "3"}});
    const Bytes good = read_file(path);
    uint64_t n;
    std::memcpy(&n, good.data(), 8);
    const std::string header(good.begin() + 8, good.begin() + 8 + long(n));
    const size_t at = header.find("\"tlcpu.checksum\":\"") + 18;
    const std::string written = header.substr(at, 16);

    Bytes flipped = good;
    flipped[8 + n + 3] ^= 0x10;  // one bit of w's first value
    write_file(path, flipped);
    const std::string e = error_of([&] { io::SafeTensors::open(path); });
    // the checksum it computes is the one of the flipped bytes: whatever it is, 16 hex digits
    REQUIRE(e.size() > 16);
    const std::string prefix = "tlcpu: " + path + ": damaged: checksum ";
    CHECK(e.substr(0, prefix.size()) == prefix);
    CHECK(e.substr(prefix.size() + 16) ==
          " differs from the " + written + " written with the file (a torn copy, a bad disk, or an edit)");
    CHECK(e.substr(prefix.size(), 16) != written);

    write_file(path, Bytes(good.begin(), good.end() - 8));  // the last two floats of b missing
    CHECK(error_of([&] { io::SafeTensors::open(path); }) ==
          "tlcpu: " + path + ": tensor 'b': data_offsets [256,272] end beyond the data region (264 bytes)");
    write_file(path, Bytes(good.begin(), good.begin() + 40));  // cut inside the header
    CHECK(error_of([&] { io::SafeTensors::open(path); }) ==
          "tlcpu: " + path + ": header length " + std::to_string(n) + " reaches beyond the end of the file (40 bytes)");
}

TEST_CASE("bad input: a folder over the decoded-image cap is refused, or streamed from disk with a notice") {
    TempDir d("cap");
    write_file(d / "a/one.png", png(12, 9, pattern(12, 9)));
    write_file(d / "a/two.jpg", jpg(5, 7, pattern(5, 7)));
    write_file(d / "b/three.png", png(3, 3, pattern(3, 3)));
    const ImageFolder f = ImageFolder::scan(d.path);
    const size_t px = 16 * 16 * 3;

    CHECK(error_of([&] { decode_folder(f, {.size = 16, .warnings = nullptr, .max_bytes = 2 * px}); }) ==
          "tlcpu: " + d.path.string() + ": decoding 3 images at 16x16 needs 0.0 MB, over the cap of 0.0 MB; use fewer "
                                        "images (an exclusion list, a per-class limit), a smaller size, or a larger cap");
    CHECK(error_of([&] { decode_folder(f, {.size = 16, .warnings = nullptr, .max_bytes = px - 1, .over_cap = OverCap::stream}); }) ==
          "tlcpu: " + d.path.string() + ": one image at 16x16 needs 768 bytes, over the cap of 767 bytes");

    DecodedSet streamed;
    const auto notice = warnings_of(f, {.size = 16, .max_bytes = 2 * px, .over_cap = OverCap::stream}, &streamed);
    CHECK(notice == std::vector<std::string>{
                        "tlcpu: notice: " + d.path.string() + ": decoding 3 images at 16x16 needs 0.0 MB, over the cap "
                        "of 0.0 MB; the images are checked now and decoded from disk again at every read instead of "
                        "kept in memory (slower, memory stays bounded)\n"});
    CHECK(streamed.streamed);
    CHECK(streamed.pixels.empty());
    CHECK(streamed.bytes() == 0);
    const DecodedSet cached = decode_folder(f, {.size = 16, .warnings = nullptr});
    REQUIRE(!cached.streamed);
    REQUIRE(streamed.files.size() == 3);
    Bytes im(px);
    for (size_t i = 0; i < 3; ++i) {
        CHECK(streamed.files[i].path == cached.files[i].path);
        streamed.read_image(i, im.data());
        CHECK(Bytes(cached.image(i), cached.image(i) + px) == im);  // the same bytes as a cached set holds
    }
    CHECK(error_of([&] { streamed.image(0); }) ==
          "tlcpu: " + d / "a/one.png" + ": a streamed DecodedSet keeps no pixels; use read_image()");

    // Batches from a streamed set are the cached set's, augmentation included.
    AugmentOptions aug;
    aug.rotation = 15, aug.zoom = 0.1f, aug.horizontal_flip = true;
    FolderSource from_disk(streamed, {0, 1, 2}, Preprocessing{}, aug, 5), from_memory(cached, {0, 1, 2}, Preprocessing{}, aug, 5);
    Tensor x1, x2;
    std::vector<int> y1, y2;
    from_disk.fill({2, 0, 1}, 3, x1, y1);
    from_memory.fill({2, 0, 1}, 3, x2, y2);
    CHECK(max_rel_diff(x1, x2) == 0.0);
    CHECK(y1 == y2);

    // A file that became unreadable after the scan is an error naming it, not a silent gap.
    write_file(d / "a/two.jpg", {'g', 'o', 'n', 'e'});
    CHECK(error_of([&] { streamed.read_image(1, im.data()); }) ==
          "tlcpu: " + d / "a/two.jpg" + ": not a decodable image (not JPEG, PNG or BMP) (it decoded when the folder was scanned)");
    CHECK(error_of([&] { from_disk.fill({1}, 0, x1, y1); }).find(d / "a/two.jpg") != std::string::npos);
}

}  // namespace tlcpu_test_bad_input

// Tests for tlcpu/io/safetensors.hpp: every rejected malformation, exact F16/BF16 widening,
// save/load round trips, and that saving is atomic (old file or new one, no debris).
#include <doctest/doctest.h>

#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <bit>
#include <cmath>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "tlcpu/io/safetensors.hpp"

namespace tlcpu_test_safetensors {

namespace fs = std::filesystem;
using tlcpu::Shape;
using tlcpu::Tensor;
using namespace tlcpu::io;

namespace {

// A fresh directory per test case, removed with everything in it afterwards.
struct TempDir {
    fs::path path;
    TempDir() {
        std::random_device rd;
        for (;;) {
            path = fs::temp_directory_path() /
                   ("tlcpu-st-test-" + std::to_string(::getpid()) + "-" + std::to_string(rd()));
            if (fs::create_directory(path)) break;
        }
    }
    ~TempDir() {
        std::error_code ec;
        fs::permissions(path, fs::perms::owner_all, fs::perm_options::add, ec);
        fs::remove_all(path, ec);
    }
    TempDir(const TempDir&) = delete;
    TempDir& operator=(const TempDir&) = delete;
    std::string operator/(const std::string& name) const { return (path / name).string(); }
};

bool has(const std::string& s, const std::string& sub) { return s.find(sub) != std::string::npos; }
doctest::Contains contains(const std::string& s) { return doctest::Contains(s.c_str()); }

std::string u64le(uint64_t n) {
    std::string s(8, '\0');
    std::memcpy(s.data(), &n, 8);
    return s;
}
// A file made of the given JSON header (length-prefixed) and data region.
std::string st_bytes(const std::string& header, const std::string& data = "") {
    return u64le(header.size()) + header + data;
}
void write_file(const std::string& path, const std::string& bytes) {
    std::ofstream(path, std::ios::binary).write(bytes.data(), std::streamsize(bytes.size()));
}
std::string read_file(const std::string& path) {
    std::ifstream f(path, std::ios::binary);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
}
template <class T>
std::string raw(std::initializer_list<T> v) {
    std::string s(v.size() * sizeof(T), '\0');
    std::memcpy(s.data(), std::data(v), s.size());
    return s;
}
std::vector<std::string> leftovers(const fs::path& dir) {
    std::vector<std::string> r;
    for (const auto& e : fs::directory_iterator(dir))
        if (has(e.path().filename().string(), ".tmp-")) r.push_back(e.path().string());
    return r;
}

// Writes `bytes` as dir/file, opens it and expects a tlcpu::Error naming the file and each needle.
void expect_bad(const TempDir& dir, const std::string& file, const std::string& bytes,
                std::initializer_list<std::string> needles) {
    const std::string path = dir / file;
    write_file(path, bytes);
    std::string msg;
    try {
        SafeTensors::open(path);
    } catch (const tlcpu::Error& e) {
        msg = e.what();
    }
    REQUIRE_MESSAGE(!msg.empty(), file, ": open() accepted a bad file");
    CHECK_MESSAGE(has(msg, path), "path missing from: ", msg);
    CHECK_MESSAGE(has(msg, "tlcpu: "), msg);
    for (const auto& n : needles) CHECK_MESSAGE(has(msg, n), "'", n, "' missing from: ", msg);
}

const std::string kW = R"("w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]})";
const std::string kData8 = raw<float>({1.f, 2.f});

}  // namespace

TEST_CASE("safetensors: rejects broken framing and headers") {
    TempDir d;
    expect_bad(d, "empty.safetensors", "", {"0 bytes", "shorter than the 8-byte header"});
    expect_bad(d, "short.safetensors", "abcde", {"5 bytes", "shorter than the 8-byte header"});
    expect_bad(d, "hdrlen.safetensors", u64le(1000) + "{}", {"header length 1000", "beyond the end of the file (10 bytes)"});
    expect_bad(d, "absurd.safetensors", u64le(~uint64_t(0)) + "{}", {"header length 18446744073709551615", "beyond"});
    expect_bad(d, "json.safetensors", st_bytes(R"({"w": {"dtype": "F32",)"), {"malformed JSON header", "parse_error"});
    expect_bad(d, "json2.safetensors", st_bytes("{} trailing"), {"malformed JSON header"});
    expect_bad(d, "array.safetensors", st_bytes("[1, 2]"), {"header is not a JSON object", "array"});
    expect_bad(d, "dup.safetensors", st_bytes("{" + kW + ", " + kW + "}", kData8), {"tensor 'w'", "duplicate"});
}

TEST_CASE("safetensors: rejects bad tensor entries") {
    TempDir d;
    auto entry = [](const std::string& body) { return st_bytes(R"({"ok": {"dtype": "F32", "shape": [], "data_offsets": [8, 12]}, "w": )" + body + "}", raw<float>({1, 2, 3})); };
    expect_bad(d, "notobj.safetensors", entry("[1]"), {"tensor 'w'", "not an object"});
    expect_bad(d, "nodtype.safetensors", entry(R"({"shape": [2], "data_offsets": [0, 8]})"), {"tensor 'w'", "missing \"dtype\""});
    expect_bad(d, "noshape.safetensors", entry(R"({"dtype": "F32", "data_offsets": [0, 8]})"), {"tensor 'w'", "missing \"shape\""});
    expect_bad(d, "nooffs.safetensors", entry(R"({"dtype": "F32", "shape": [2]})"), {"tensor 'w'", "missing \"data_offsets\""});
    expect_bad(d, "dtypenum.safetensors", entry(R"({"dtype": 7, "shape": [2], "data_offsets": [0, 8]})"), {"tensor 'w'", "dtype 7 is not a string"});
    expect_bad(d, "dtype.safetensors", entry(R"({"dtype": "F8_E4M3", "shape": [2], "data_offsets": [0, 8]})"), {"tensor 'w'", "unknown dtype 'F8_E4M3'"});
    expect_bad(d, "shapeobj.safetensors", entry(R"({"dtype": "F32", "shape": 2, "data_offsets": [0, 8]})"), {"tensor 'w'", "shape 2 is not an array"});
    expect_bad(d, "shapeneg.safetensors", entry(R"({"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]})"), {"tensor 'w'", "non-negative integers"});
    expect_bad(d, "shapeflt.safetensors", entry(R"({"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]})"), {"tensor 'w'", "non-negative integers"});
    expect_bad(d, "shapestr.safetensors", entry(R"({"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]})"), {"tensor 'w'", "non-negative integers"});
    expect_bad(d, "overflow.safetensors", entry(R"({"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 8]})"), {"tensor 'w'", "overflows"});
    expect_bad(d, "overflow2.safetensors", entry(R"({"dtype": "F32", "shape": [9223372036854775808], "data_offsets": [0, 8]})"), {"tensor 'w'", "overflows"});
    // Overflow is judged in multiplication order, so a trailing 0 does not excuse it.
    expect_bad(d, "overflow3.safetensors", entry(R"({"dtype": "U8", "shape": [4294967296, 4294967296, 0], "data_offsets": [0, 0]})"), {"tensor 'w'", "overflows"});
    expect_bad(d, "offs1.safetensors", entry(R"({"dtype": "F32", "shape": [2], "data_offsets": [8]})"), {"tensor 'w'", "data_offsets [8] is not two non-negative integers"});
    expect_bad(d, "offsneg.safetensors", entry(R"({"dtype": "F32", "shape": [2], "data_offsets": [-8, 0]})"), {"tensor 'w'", "not two non-negative integers"});
    expect_bad(d, "offsobj.safetensors", entry(R"({"dtype": "F32", "shape": [2], "data_offsets": {"a": 0}})"), {"tensor 'w'", "not two non-negative integers"});
    expect_bad(d, "offsrev.safetensors", entry(R"({"dtype": "F32", "shape": [0], "data_offsets": [8, 0]})"), {"tensor 'w'", "data_offsets [8,0]: begin > end"});
    expect_bad(d, "size.safetensors", entry(R"({"dtype": "F32", "shape": [3], "data_offsets": [0, 8]})"), {"tensor 'w'", "size mismatch", "[3] of F32 needs 12 bytes", "span 8"});
    expect_bad(d, "size16.safetensors", entry(R"({"dtype": "F16", "shape": [2], "data_offsets": [0, 8]})"), {"tensor 'w'", "size mismatch", "needs 4 bytes"});
    expect_bad(d, "overlap.safetensors", entry(R"({"dtype": "F32", "shape": [2], "data_offsets": [4, 12]})"), {"tensor 'ok'", "overlap tensor 'w' (data_offsets [4,12])"});

    // The exact wording, as other code and users will see it.
    const std::string path = d / "beyond.safetensors";
    write_file(path, st_bytes(R"({"conv1.weight": {"dtype": "F32", "shape": [25], "data_offsets": [0, 100]}})", std::string(64, '\0')));
    CHECK_THROWS_WITH_AS(SafeTensors::open(path),
                         ("tlcpu: " + path + ": tensor 'conv1.weight': data_offsets [0,100] end beyond the data region (64 bytes)").c_str(),
                         tlcpu::Error);
}

TEST_CASE("safetensors: rejects bad __metadata__, reports absent tensors") {
    TempDir d;
    expect_bad(d, "metaarr.safetensors", st_bytes(R"({"__metadata__": ["a"], )" + kW + "}", kData8), {"__metadata__ is not an object of strings", "array"});
    expect_bad(d, "metanum.safetensors", st_bytes(R"({"__metadata__": {"a": "x", "epoch": 3}, )" + kW + "}", kData8), {"__metadata__ entry 'epoch' is not a string"});

    const std::string path = d / "fine.safetensors";
    write_file(path, st_bytes("{" + kW + "}", kData8));
    const SafeTensors st = SafeTensors::open(path);
    CHECK(st.metadata().empty());
    CHECK_FALSE(st.contains("nope"));
    CHECK_THROWS_WITH_AS(st.info("nope"), contains(path + ": tensor 'nope': no such tensor"), tlcpu::Error);
    CHECK_THROWS_WITH_AS(st.get("nope"), contains("'nope'"), tlcpu::Error);
    CHECK_THROWS_WITH_AS(SafeTensors::open(d / "missing.safetensors"),
                         contains(d / "missing.safetensors" + ": cannot open: No such file"), tlcpu::Error);
    CHECK_THROWS_WITH_AS(SafeTensors::open(d.path.string()), contains(d.path.string() + ": cannot read: Is a directory"), tlcpu::Error);
}

TEST_CASE("safetensors: accepts edge cases (scalars, empty tensors, unaligned data, other dtypes)") {
    // A 13-byte header puts the data region at an odd offset; readers must not assume alignment.
    const std::string header = R"({"s": {"dtype": "F64", "shape": [], "data_offsets": [0, 8]},)"
                               R"( "e": {"dtype": "F32", "shape": [0, 5], "data_offsets": [8, 8]},)"
                               R"( "l": {"dtype": "I64", "shape": [3], "data_offsets": [8, 32]},)"
                               R"( "i": {"dtype": "I32", "shape": [2], "data_offsets": [32, 40]},)"
                               R"( "h": {"dtype": "I16", "shape": [1], "data_offsets": [40, 42]},)"
                               R"( "c": {"dtype": "I8", "shape": [1], "data_offsets": [42, 43]},)"
                               R"( "u": {"dtype": "U8", "shape": [2], "data_offsets": [43, 45]},)"
                               R"( "b": {"dtype": "BOOL", "shape": [2], "data_offsets": [45, 47]}})";
    const std::string data = raw<double>({-3.25}) + raw<int64_t>({0, 7, -1}) + raw<int32_t>({123456, -9}) +
                             raw<int16_t>({-300}) + raw<int8_t>({-5}) + raw<uint8_t>({0, 255}) + raw<uint8_t>({0, 1});
    const SafeTensors st = SafeTensors::parse([&] { auto b = st_bytes(header + "   ", data); return std::vector<char>(b.begin(), b.end()); }(), "mem");
    CHECK(st.path() == "mem");
    CHECK(st.names() == std::vector<std::string>{"s", "e", "l", "i", "h", "c", "u", "b"});
    CHECK(st.info("s").dtype == DType::F64);
    CHECK(st.get("s").shape() == Shape{});
    CHECK(st.get("s")[0] == -3.25f);
    CHECK(st.get("e").shape() == Shape{0, 5});
    CHECK(st.get("e").size() == 0);
    auto vals = [&](const char* n) { Tensor t = st.get(n); return std::vector<float>(t.begin(), t.end()); };
    CHECK(vals("l") == std::vector<float>{0, 7, -1});
    CHECK(vals("i") == std::vector<float>{123456, -9});
    CHECK(vals("h") == std::vector<float>{-300});
    CHECK(vals("c") == std::vector<float>{-5});
    CHECK(vals("u") == std::vector<float>{0, 255});
    CHECK(vals("b") == std::vector<float>{0, 1});
}

TEST_CASE("safetensors: F16 and BF16 widen exactly") {
    const float inf = std::numeric_limits<float>::infinity();
    CHECK(half_to_float(0x3C00) == 1.0f);
    CHECK(half_to_float(0xC100) == -2.5f);
    CHECK(half_to_float(0x7BFF) == 65504.0f);
    CHECK(half_to_float(0x0001) == std::ldexp(1.0f, -24));  // smallest subnormal
    CHECK(half_to_float(0x03FF) == std::ldexp(1023.0f, -24));  // largest subnormal
    CHECK(half_to_float(0x0400) == std::ldexp(1.0f, -14));  // smallest normal
    CHECK(half_to_float(0x7C00) == inf);
    CHECK(half_to_float(0xFC00) == -inf);
    CHECK(std::signbit(half_to_float(0x8000)));
    CHECK(half_to_float(0x8000) == 0.0f);
    CHECK(std::isnan(half_to_float(0x7E00)));
    CHECK(std::isnan(half_to_float(0x7C01)));

    // Every one of the 65536 halves against the textbook definition, evaluated in double.
    for (uint32_t h = 0; h < 0x10000; ++h) {
        const int s = h >> 15, e = (h >> 10) & 31, m = h & 1023;
        const float got = half_to_float(uint16_t(h));
        if (e == 31) {
            REQUIRE(((m == 0) ? std::isinf(got) : std::isnan(got)));
            continue;
        }
        const double want = (s ? -1.0 : 1.0) * (e ? std::ldexp(1.0 + m / 1024.0, e - 15) : std::ldexp(double(m), -24));
        REQUIRE_MESSAGE(double(got) == want, "half 0x", std::hex, h);
        REQUIRE(std::signbit(got) == bool(s));
    }

    CHECK(bf16_to_float(0x3F80) == 1.0f);
    CHECK(bf16_to_float(0xC020) == -2.5f);
    CHECK(bf16_to_float(0x477F) == 65280.0f);  // 65504 is not a bfloat16; this is its neighbour below
    CHECK(bf16_to_float(0x0001) == std::ldexp(1.0f, -133));  // smallest subnormal
    CHECK(bf16_to_float(0x7F7F) == std::bit_cast<float>(0x7F7F0000u));  // largest finite
    CHECK(bf16_to_float(0x7F80) == inf);
    CHECK(bf16_to_float(0xFF80) == -inf);
    CHECK(std::isnan(bf16_to_float(0x7FC0)));

    // And through a file, at an odd data offset.
    const std::string header = R"({"h": {"dtype": "F16", "shape": [5], "data_offsets": [0, 10]}, )"
                               R"("b": {"dtype": "BF16", "shape": [5], "data_offsets": [10, 20]}})";
    const std::string data = raw<uint16_t>({0x3C00, 0xC100, 0x7BFF, 0x0001, 0x7C00}) +
                             raw<uint16_t>({0x3F80, 0xC020, 0x477F, 0x0001, 0x7F80});
    TempDir d;
    write_file(d / "half.safetensors", st_bytes(header + " ", data));
    const SafeTensors st = SafeTensors::open(d / "half.safetensors");
    const Tensor h = st.get("h"), b = st.get("b");
    CHECK(std::vector<float>(h.begin(), h.end()) == std::vector<float>{1.0f, -2.5f, 65504.0f, std::ldexp(1.0f, -24), inf});
    CHECK(std::vector<float>(b.begin(), b.end()) == std::vector<float>{1.0f, -2.5f, 65280.0f, std::ldexp(1.0f, -133), inf});
}

TEST_CASE("safetensors: save/load round trip") {
    TempDir d;
    Tensor a(Shape{2, 3}), b(Shape{5}), s(Shape{}, 42.f), e(Shape{0, 4});
    for (int64_t i = 0; i < a.size(); ++i) a[i] = float(i) * 0.5f - 1.f;
    const float specials[] = {-0.0f, std::numeric_limits<float>::infinity(), std::numeric_limits<float>::denorm_min(),
                              std::numeric_limits<float>::max(), std::numeric_limits<float>::quiet_NaN()};
    std::memcpy(b.data(), specials, sizeof specials);
    const std::map<std::string, std::string> meta{{"preprocessing", "BGR, minus mean"}, {"note", "ünïcödé \"quoted\"\n"}};
    const std::string path = d / "model.safetensors";
    // Deliberately not alphabetical: the file must keep this order.
    save_safetensors(path, {{"zeta.weight", &a}, {"alpha", &b}, {"scalar", &s}, {"empty", &e}}, meta);

    const std::string bytes = read_file(path);
    uint64_t n;
    std::memcpy(&n, bytes.data(), 8);
    CHECK(n % 8 == 0);
    CHECK(bytes.size() == 8 + n + (6 + 5 + 1) * 4);
    const auto header = nlohmann::ordered_json::parse(bytes.substr(8, n));
    CHECK(header.begin().key() == "__metadata__");
    CHECK(header["alpha"]["dtype"] == "F32");

    const SafeTensors st = SafeTensors::open(path);
    CHECK(st.names() == std::vector<std::string>{"zeta.weight", "alpha", "scalar", "empty"});
    auto got_meta = st.metadata();
    CHECK(got_meta.count("tlcpu.checksum") == 1);
    got_meta.erase("tlcpu.checksum");
    CHECK(got_meta == meta);
    CHECK(st.meta("preprocessing") == "BGR, minus mean");
    CHECK(st.meta("absent", "fallback") == "fallback");
    for (auto [n, t] : {std::pair{"zeta.weight", &a}, {"alpha", &b}, {"scalar", &s}, {"empty", &e}}) {
        const std::string name = n;
        CAPTURE(name);
        const Tensor got = st.get(name);
        CHECK(got.shape() == t->shape());
        CHECK(st.info(name).shape == t->shape());
        CHECK(st.info(name).dtype == DType::F32);
        CHECK(std::memcmp(got.data(), t->data(), t->bytes()) == 0);  // bitwise: -0 and nan survive
    }

    // No metadata of the caller's: the checksum alone.
    save_safetensors(path, {{"a", &a}});
    CHECK(SafeTensors::open(path).metadata().size() == 1);
    CHECK_THROWS_WITH_AS(save_safetensors(path, {{"a", &a}}, {{"tlcpu.checksum", "0"}}), contains("is reserved"),
                         tlcpu::Error);
}

TEST_CASE("safetensors: a damaged file is detected on load by the checksum in its metadata") {
    TempDir d;
    Tensor a(Shape{64}), b(Shape{3, 3});
    for (int64_t i = 0; i < a.size(); ++i) a[i] = float(i);
    for (int64_t i = 0; i < b.size(); ++i) b[i] = -float(i);
    const std::string path = d / "ckpt.safetensors";
    save_safetensors(path, {{"layer.weight", &a}, {"layer.bias", &b}}, {{"epoch", "3"}});
    const std::string good = read_file(path);
    CHECK(SafeTensors::open(path).get("layer.weight")[63] == 63.f);
    uint64_t n;
    std::memcpy(&n, good.data(), 8);
    // One flipped bit anywhere in the data region, and a renamed tensor in a still-valid header.
    for (const size_t at : {size_t(8 + n), size_t(8 + n + 100), good.size() - 1}) {
        std::string bad = good;
        bad[at] = char(bad[at] ^ 0x10);
        CAPTURE(at);
        expect_bad(d, "flipped.safetensors", bad, {"damaged: checksum"});
    }
    std::string renamed = good;
    const size_t at = renamed.find("layer.bias");
    REQUIRE(at != std::string::npos);
    renamed[at] = 'L';
    expect_bad(d, "renamed.safetensors", renamed, {"damaged: checksum", "written with the file"});
    // A file from elsewhere (no checksum) loads as before.
    write_file(d / "plain.safetensors", st_bytes("{" + kW + "}", kData8));
    CHECK(SafeTensors::open(d / "plain.safetensors").get("w")[1] == 2.f);
}

TEST_CASE("safetensors: save replaces atomically and cleans up after failures") {
    TempDir d;
    const std::string path = d / "m.safetensors";
    Tensor one(Shape{1}, 1.f), big(Shape{10000}, 2.f);
    save_safetensors(path, {{"old", &one}});
    const std::string old_bytes = read_file(path);

    SUBCASE("over an existing file") {
        save_safetensors(path, {{"new", &big}}, {{"v", "2"}});
        const SafeTensors st = SafeTensors::open(path);
        CHECK(st.names() == std::vector<std::string>{"new"});
        CHECK(st.meta("v") == "2");
        CHECK(leftovers(d.path).empty());
        CHECK(std::distance(fs::directory_iterator(d.path), fs::directory_iterator()) == 1);
    }
    SUBCASE("into a directory that does not exist") {
        const std::string bad = d / "no-such-dir/m.safetensors";
        CHECK_THROWS_WITH_AS(save_safetensors(bad, {{"new", &big}}),
                             contains(bad + ": cannot create temporary file"), tlcpu::Error);
        CHECK_THROWS_WITH_AS(save_safetensors(bad, {{"new", &big}}), contains("No such file or directory"), tlcpu::Error);
        CHECK_FALSE(fs::exists(d.path / "no-such-dir"));
    }
    SUBCASE("into a read-only directory") {
        if (::geteuid() == 0) {
            MESSAGE("running as root, which ignores directory permissions: skipped");
            return;
        }
        fs::permissions(d.path, fs::perms::owner_read | fs::perms::owner_exec);
        CHECK_THROWS_WITH_AS(save_safetensors(path, {{"new", &big}}), contains(path + ": cannot create"), tlcpu::Error);
        fs::permissions(d.path, fs::perms::owner_all);
        CHECK(read_file(path) == old_bytes);
        CHECK(leftovers(d.path).empty());
    }
    SUBCASE("when the disk fills up mid-write") {
        // RLIMIT_FSIZE makes write() fail with EFBIG past 4 KiB, like a full disk, even for root.
        rlimit saved{};
        REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
        rlimit small = saved;
        small.rlim_cur = 4096;
        auto old_handler = std::signal(SIGXFSZ, SIG_IGN);
        REQUIRE(::setrlimit(RLIMIT_FSIZE, &small) == 0);
        std::string msg;
        try {
            save_safetensors(path, {{"new", &big}});
        } catch (const tlcpu::Error& e) {
            msg = e.what();
        }
        ::setrlimit(RLIMIT_FSIZE, &saved);
        std::signal(SIGXFSZ, old_handler);
        CHECK(has(msg, path + ": cannot write"));
        CHECK(has(msg, std::strerror(EFBIG)));
        CHECK(read_file(path) == old_bytes);
        CHECK(leftovers(d.path).empty());
    }
    SUBCASE("when the rename fails") {
        // A non-empty directory where the file should go: everything succeeds up to rename().
        const std::string target = d / "occupied";
        fs::create_directories(fs::path(target) / "child");
        CHECK_THROWS_WITH_AS(save_safetensors(target, {{"new", &big}}), contains(target + ": cannot rename"), tlcpu::Error);
        CHECK(fs::is_directory(fs::path(target) / "child"));
        CHECK(leftovers(d.path).empty());
    }
    SUBCASE("with invalid input, before touching the disk") {
        Tensor none;
        CHECK_THROWS_WITH_AS(save_safetensors(path, {{"a", &one}, {"a", &one}}), contains(path + ": tensor 'a': duplicate"), tlcpu::Error);
        CHECK_THROWS_WITH_AS(save_safetensors(path, {{"n", nullptr}}), contains("tensor 'n': null"), tlcpu::Error);
        CHECK_THROWS_WITH_AS(save_safetensors(path, {{"d", &none}}), contains("tensor 'd': has no storage"), tlcpu::Error);
        CHECK_THROWS_WITH_AS(save_safetensors(path, {{"__metadata__", &one}}), contains("reserved"), tlcpu::Error);
        CHECK_THROWS_WITH_AS(save_safetensors(path, {{"bad\xff", &one}}), contains("cannot encode the header"), tlcpu::Error);
    }
    if (!has(read_file(path), "\"new\"")) CHECK(read_file(path) == old_bytes);  // every failure left it alone
}

TEST_SUITE("fixture") {
    TEST_CASE("safetensors: ResNet-50 partial ImageNet weights in shared/") {
        const SafeTensors st = SafeTensors::open(TLCPU_SHARED_DIR "/weights/resnet50-imagenet-caffe-partial.safetensors");
        CHECK(st.size() == 257);
        CHECK(st.names().size() == 257);
        CHECK(st.names().front() == "conv1.weight");
        CHECK(st.info("conv1.weight").shape == Shape{64, 3, 7, 7});
        CHECK(st.info("conv1.weight").dtype == DType::F32);
        CHECK(st.metadata().count("preprocessing") == 1);
        CHECK(has(st.meta("preprocessing"), "BGR"));
        CHECK_FALSE(st.contains("fc.weight"));  // documented as missing from this partial file
        const Tensor w = st.get("conv1.weight");
        CHECK(std::all_of(w.begin(), w.end(), [](float v) { return std::isfinite(v); }));
        CHECK(std::any_of(w.begin(), w.end(), [](float v) { return v != 0.f; }));
        const Tensor var = st.get("bn1.running_var");
        CHECK(std::all_of(var.begin(), var.end(), [](float v) { return v > 0.f; }));
    }
}

}  // namespace tlcpu_test_safetensors

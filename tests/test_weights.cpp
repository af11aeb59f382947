// Loading a state_dict by name: the report of missing, unexpected and mis-shaped tensors,
// initialisation of what the caller allows to be missing, and conv-bias folding.
#include <doctest/doctest.h>

#include <filesystem>
#include <map>

#include "fixtures.hpp"

namespace tlcpu_test_weights {

using namespace tlcpu;
namespace fs = std::filesystem;

namespace {

using Tiny = ResNet50<Layout::v1_5, 4>;

// Every tensor of a model as a name -> value map, the way a framework would export it.
template <class M>
std::map<std::string, Tensor> state_dict(M& m) {
    std::map<std::string, Tensor> out;
    uint64_t k = 0;
    m.visit("", [&](const std::string& n, Param& p) {
        Tensor t = p.value;
        for (int64_t i = 0; i < t.size(); ++i) t[i] = 0.5f + uniform01(3, k, uint64_t(i));
        ++k;
        out.emplace(n, std::move(t));
    });
    return out;
}

struct TempFile {
    fs::path path = fs::temp_directory_path() / ("tlcpu-weights-test-" + std::to_string(::getpid()) + ".safetensors");
    ~TempFile() { fs::remove(path); }
};

io::SafeTensors write(const TempFile& f, const std::map<std::string, Tensor>& sd) {
    std::vector<std::pair<std::string, const Tensor*>> v;
    for (const auto& [n, t] : sd) v.push_back({n, &t});
    io::save_safetensors(f.path.string(), v, {{"layout", "v1.5"}});
    return io::SafeTensors::open(f.path.string());
}

using test::error_of;

}  // namespace

TEST_CASE("a complete file loads every tensor by name, values intact") {
    TempFile f;
    auto net = std::make_unique<Tiny>();
    auto sd = state_dict(*net);
    auto file = write(f, sd);
    auto r = load_weights(*net, file);
    CHECK(r.loaded.size() == sd.size());
    CHECK(r.initialised.empty());
    CHECK(r.unexpected.empty());
    CHECK(file.meta("layout") == "v1.5");
    net->visit("", [&](const std::string& n, Param& p) { CHECK(max_rel_diff(p.value, sd.at(n)) == 0.0); });
}

TEST_CASE("missing tensors are an error listing them, unless the caller names them") {
    TempFile f;
    auto net = std::make_unique<Tiny>();
    auto sd = state_dict(*net);
    std::vector<std::string> dropped;
    for (auto it = sd.begin(); it != sd.end();)
        if (it->first.starts_with("layer4.") && (it->first.find("conv") != std::string::npos || it->first.find("downsample.0") != std::string::npos)) {
            dropped.push_back(it->first);
            it = sd.erase(it);
        } else {
            ++it;
        }
    REQUIRE(dropped.size() == 10);  // 3 blocks x 3 convs + the projection
    auto file = write(f, sd);

    std::string msg = error_of([&] { load_weights(*net, file); });
    CHECK(msg.find(f.path.string()) != std::string::npos);
    CHECK(msg.find("10 tensors the model needs are missing") != std::string::npos);
    for (const auto& n : dropped) CHECK(msg.find(n) != std::string::npos);

    LoadOptions opt;
    opt.init_missing = {"layer4."};
    opt.seed = 42;
    auto r = load_weights(*net, file, opt);
    CHECK(r.initialised.size() == 10);
    CHECK(r.loaded.size() == sd.size());
    // He normal: std sqrt(2 / fan_in) for layer4.1.conv2 (fan_in 32 * 3 * 3).
    Tensor w;
    net->visit("", [&](const std::string& n, Param& p) { if (n == "layer4.1.conv2.weight") w = p.value; });
    double ss = 0;
    for (float v : w) ss += double(v) * v;
    CHECK(std::sqrt(ss / double(w.size())) == doctest::Approx(std::sqrt(2.0 / 288)).epsilon(0.1));
    // Same seed, same weights; another seed, others.
    auto again = std::make_unique<Tiny>();
    load_weights(*again, file, opt);
    again->visit("", [&](const std::string& n, Param& p) { if (n == "layer4.1.conv2.weight") CHECK(max_rel_diff(p.value, w) == 0.0); });
    opt.seed = 43;
    load_weights(*again, file, opt);
    again->visit("", [&](const std::string& n, Param& p) { if (n == "layer4.1.conv2.weight") CHECK(max_rel_diff(p.value, w) > 0.1); });
}

TEST_CASE("a mis-shaped tensor is an error naming it and both shapes") {
    TempFile f;
    auto net = std::make_unique<Tiny>();
    auto sd = state_dict(*net);
    sd["layer2.0.conv2.weight"] = Tensor({8, 8, 1, 3});
    auto file = write(f, sd);
    std::string msg = error_of([&] { load_weights(*net, file); });
    CHECK(msg.find("wrong shape") != std::string::npos);
    CHECK(msg.find("layer2.0.conv2.weight (file [8,8,1,3], model [8,8,3,3])") != std::string::npos);
}

TEST_CASE("unexpected tensors are reported; Keras-style conv biases fold into the BN mean") {
    TempFile f;
    auto net = std::make_unique<Tiny>();
    auto sd = state_dict(*net);
    sd["fc.weight"] = Tensor({1000, 128}, 0.f);
    Tensor b({4}, 0.25f);
    sd["conv1.bias"] = b;                       // stem conv -> bn1
    sd["layer1.0.downsample.0.bias"] = Tensor({16}, 1.f);  // projection conv -> downsample.1
    auto file = write(f, sd);
    auto r = load_weights(*net, file);
    CHECK(r.unexpected == std::vector<std::string>{"fc.weight"});
    CHECK(r.folded.size() == 2);
    Tensor mean, dmean;
    net->visit("", [&](const std::string& n, Param& p) {
        if (n == "bn1.running_mean") mean = p.value;
        if (n == "layer1.0.downsample.1.running_mean") dmean = p.value;
    });
    for (int c = 0; c < 4; ++c) CHECK(mean[c] == doctest::Approx(sd["bn1.running_mean"][c] - 0.25f));
    for (int c = 0; c < 16; ++c) CHECK(dmean[c] == doctest::Approx(sd["layer1.0.downsample.1.running_mean"][c] - 1.f));
    CHECK(r.summary().find("1 unexpected") != std::string::npos);
}

}  // namespace tlcpu_test_weights

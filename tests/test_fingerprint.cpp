// The weights' fingerprint (core/fingerprint.hpp): FNV-1a 64 by its published test vectors,
// the same for equal weights whatever the thread count, another for one flipped bit of one
// weight or running statistic, and what the trainer logs after each epoch.
#include <doctest/doctest.h>

#include <omp.h>

#include <cstring>

#include "fixtures.hpp"

namespace tlcpu_test_fingerprint {

using namespace tlcpu;

namespace {

void flip_lowest_bit(Param& p, int64_t i) {
    uint32_t w;
    std::memcpy(&w, p.value.data() + i, 4);
    w ^= 1u;
    std::memcpy(p.value.data() + i, &w, 4);
}

Param& param(test::TinyNet& net, const std::string& name) {
    Param* found = nullptr;
    net.visit("", [&](const std::string& n, Param& p) {
        if (n == name) found = &p;
    });
    REQUIRE(found);
    return *found;
}

}  // namespace

TEST_CASE("fingerprint: FNV-1a 64 over the weights' bytes in visit order, 16 hex digits") {
    CHECK(fnv1a64("", 0) == 0xcbf29ce484222325ull);
    CHECK(fnv1a64("a", 1) == 0xaf63dc4c8601ec8cull);
    CHECK(fnv1a64("foobar", 6) == 0x85944171f73967e8ull);
    CHECK(fnv1a64("bar", 3, fnv1a64("foo", 3)) == fnv1a64("foobar", 6));  // it chains
    CHECK(fingerprint_hex(0x85944171f73967e8ull) == "85944171f73967e8");
    CHECK(fingerprint_hex(0xabcull) == "0000000000000abc");

    auto net = test::fresh_tiny(5);
    std::vector<unsigned char> bytes;
    net->visit("", [&](const std::string&, Param& p) {
        const auto* b = reinterpret_cast<const unsigned char*>(p.value.data());
        bytes.insert(bytes.end(), b, b + p.value.bytes());
    });
    CHECK(fingerprint(*net) == fnv1a64(bytes.data(), bytes.size()));
}

TEST_CASE("fingerprint: equal weights agree at any thread count; one flipped bit of one weight or statistic does not") {
    auto a = test::fresh_tiny(5), b = test::fresh_tiny(5);
    const int threads = omp_get_max_threads();
    omp_set_num_threads(1);
    const uint64_t one = fingerprint(*a);
    omp_set_num_threads(2);
    const uint64_t two = fingerprint(*b);
    omp_set_num_threads(threads);
    CHECK(one == two);
    CHECK(fingerprint(*test::fresh_tiny(6)) != one);

    // The lowest mantissa bit: a change of one part in 2^23 of one number among 1.5 million.
    for (const char* name : {"layer2.1.conv2.weight", "layer3.0.bn1.running_var", "head_fc.bias"}) {
        CAPTURE(name);
        Param& p = param(*a, name);
        flip_lowest_bit(p, p.value.size() / 2);
        CHECK(fingerprint(*a) != one);
        flip_lowest_bit(p, p.value.size() / 2);
        CHECK(fingerprint(*a) == one);
    }
}

TEST_CASE("fit logs each epoch's fingerprint: of the model trained, or of what weights_fingerprint names") {
    auto net = test::fresh_tiny(8);
    auto data = test::synthetic_squares(16, 1);
    Adam adam(1e-3);
    Trainer<test::TinyNet> trainer(*net, adam);
    FitOptions o;
    o.epochs = 2;
    o.batch = 8;
    o.seed = 3;
    auto logged = trainer.fit(data, nullptr, o);
    REQUIRE(logged.size() == 2);
    CHECK(logged[1].text.at("fingerprint") == fingerprint_hex(fingerprint(*net)));
    CHECK(logged[0].text.at("fingerprint") != logged[1].text.at("fingerprint"));  // training moved the weights

    trainer.weights_fingerprint = [] { return uint64_t(42); };
    o.epochs = 1;
    CHECK(trainer.fit(data, nullptr, o)[0].text.at("fingerprint") == "000000000000002a");
}

}  // namespace tlcpu_test_fingerprint

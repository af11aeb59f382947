// libFuzzer target: the safetensors reader on arbitrary bytes. parse() is what open() runs on
// a file's contents: framing, the JSON header, every entry's checks, the tlcpu.checksum
// verification when the metadata has one; then every tensor is read and widened to float.
// Bad input must end in a tlcpu::Error naming the file; anything else (a sanitizer report,
// another exception, an allocation over -malloc_limit_mb) is a finding.
// Seeds (corpus/safetensors): a model and a checkpoint-like file that save_safetensors wrote
// (with checksums), a hand-made file without one in the other dtypes at an odd data offset,
// and truncated, bit-flipped and absurd-header-length variants.
#include <cstdint>
#include <string_view>
#include <vector>

#include "tlcpu/io/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    try {
        const auto st = tlcpu::io::SafeTensors::parse(std::vector<char>(data, data + size), "fuzz.safetensors");
        double sum = 0;
        for (const auto& name : st.names()) {
            const tlcpu::Tensor t = st.get(name);
            for (float v : t) sum += double(v);
        }
        for (const auto& [k, v] : st.metadata()) sum += double(k.size() + v.size());
        volatile double sink = sum;  // so the reads cannot be optimised away
        (void)sink;
    } catch (const tlcpu::Error& e) {
        if (std::string_view(e.what()).find("fuzz.safetensors") == std::string_view::npos) __builtin_trap();
    }
    return 0;
}

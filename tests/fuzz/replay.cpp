// Runs a fuzz target's LLVMFuzzerTestOneInput on every file of the given folders, as a plain
// program in the normal build: CTest replays the seed corpus and every input a fuzzer ever
// found (regressions/), so each must still end in a clean tlcpu::Error or a success.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <vector>

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size);

int main(int argc, char** argv) {
    namespace fs = std::filesystem;
    size_t n = 0;
    for (int a = 1; a < argc; ++a) {
        std::vector<fs::path> files;
        for (const auto& e : fs::directory_iterator(argv[a]))
            if (e.is_regular_file() && e.path().filename().string()[0] != '.') files.push_back(e.path());  // not .keep
        std::sort(files.begin(), files.end());
        for (const auto& p : files) {
            std::ifstream in(p, std::ios::binary);
            std::vector<uint8_t> b((std::istreambuf_iterator<char>(in)), {});
            std::printf("%s (%zu bytes)\n", p.c_str(), b.size());
            std::fflush(stdout);  // the last line names the input if it crashes
            LLVMFuzzerTestOneInput(b.data(), b.size());
            ++n;
        }
    }
    if (n == 0) {
        std::fprintf(stderr, "replay: no inputs in the given folders\n");
        return 1;
    }
    std::printf("replay: %zu inputs, each a success or a clean tlcpu::Error\n", n);
    return 0;
}

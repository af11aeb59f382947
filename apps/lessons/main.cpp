// lessons CHAPTER: one chapter of the tour (docs/tour.md), run on a real MRI scan from
// ../shared with the real ImageNet weights. Prints what the chapter explains and checks it;
// exits 1 at the first check that fails.
#include <cstring>

#include "lesson.hpp"

int main(int argc, char** argv) {
    const std::vector<std::pair<const char*, void (*)()>> chapters{
        {"decode", lesson::decode}, {"stem", lesson::stem},   {"block", lesson::block},   {"freeze", lesson::freeze},
        {"batchnorm", lesson::batchnorm}, {"head", lesson::head}, {"loss", lesson::loss}, {"adam", lesson::adam},
        {"phases", lesson::phases}, {"cache", lesson::cache}, {"gradcam", lesson::gradcam}};
    for (const auto& [name, run] : chapters)
        if (argc == 2 && std::strcmp(argv[1], name) == 0) {
            try {
                run();
            } catch (const std::exception& e) {
                std::printf("FAILED: %s\n", e.what());
                return 1;
            }
            std::printf("lesson %s: %d checks passed\n", name, lesson::checks());
            return 0;
        }
    std::fprintf(stderr, "usage: lessons CHAPTER, one of:");
    for (const auto& c : chapters) std::fprintf(stderr, " %s", c.first);
    std::fprintf(stderr, "\n");
    return 2;
}

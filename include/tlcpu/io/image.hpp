// tlcpu: decoding an image file to 8-bit RGB, resizing it, and the two ImageNet
// preprocessing conventions. The format is detected from the bytes, not the file name.
#pragma once
#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include <stb_image.h>
#include <stb_image_resize.h>

#include "tlcpu/core/tensor.hpp"

namespace tlcpu {

struct Image {
    int width = 0, height = 0;
    std::vector<uint8_t> rgb;  // height x width x 3, row-major
    int channels = 3;          // in the file, before conversion: 1 gray, 2 gray+alpha, 3 RGB, 4 RGBA
};

// Images with more pixels than this are refused from their header, before any pixel memory
// is allocated: a small file can declare a huge canvas (a decompression bomb). The value is
// Pillow's MAX_IMAGE_PIXELS; MRI slices are far below it.
inline int64_t max_image_pixels = 89'478'485;

// Files larger than this are refused before they are read, so a huge file named .jpg
// cannot take the memory: stb_image takes the length as an int (2 GiB), and at the pixel
// limit no file of a format decoded here needs more (a 16-bit RGBA PNG stored without
// compression at 89.5 M pixels is 716 MB).
inline int64_t max_image_file_bytes = int64_t(1) << 30;

namespace detail {

// Only JPEG, PNG and BMP reach stb_image, recognised by their signatures. Its other decoders
// (GIF, PSD, PIC, HDR, PNM, TGA) are not needed for scans, TGA has no signature at all (so
// arbitrary bytes can pass for one), and Debian 12's stb_image 2.27 has memory-safety bugs
// in several of them.
inline const char* image_format(const unsigned char* p, size_t n) {
    if (n >= 3 && p[0] == 0xFF && p[1] == 0xD8 && p[2] == 0xFF) return "JPEG";
    if (n >= 8 && std::memcmp(p, "\x89PNG\r\n\x1a\n", 8) == 0) return "PNG";
    if (n >= 2 && p[0] == 'B' && p[1] == 'M') return "BMP";
    return nullptr;
}

// Faults of a JPEG that stb_image 2.27 does not catch, found here before it sees the file:
// - A Huffman table whose 16 code counts add up to more than 256: stb writes that many
//   symbols into a 256-entry table, over the rest of its decoder state (stbi_info runs into
//   it too). Corrupt by the standard.
// - A table of exactly 256 codes, none longer than 9 bits: stb's lookup table marks "no
//   code of 9 bits or fewer here" with the value 255, which is then also the 256th code's
//   index, so that code decodes as another (an assertion in stb's debug build, wrong pixels
//   in a release one). Legal by the standard but no encoder writes it (a JPEG has at most
//   176 distinct symbols per table).
// - A scan that decodes with a Huffman or quantisation table the file has not defined
//   before it: stb's tables are uninitialised heap memory until defined, so the pixels (and
//   the assertion above) would depend on what the heap held. libjpeg refuses both too ("Huffman
//   table was not defined", "Quantization table was not defined"). Which Huffman tables a
//   scan decodes with: a sequential one, both of each component; a progressive DC scan, the
//   DC table on its first pass only; a progressive AC scan, the AC table.
// - No end-of-image marker after the last scan: a truncated file. stb decodes the missing
//   part from zero bits and reports success, so half an image would train as a whole one;
//   Pillow (what Keras reads with) refuses it too. Entropy-coded data cannot hold FFD9.
// The walk finds markers where stb does: segments by their length, any bytes between them
// (entropy-coded data, padding) scanned for the next 0xFF marker, since progressive files
// define tables between scans. Returns "" or the fault.
inline std::string jpeg_fault(const unsigned char* p, size_t n) {
    bool progressive = false;
    unsigned defined[2] = {0, 0};  // bit th of defined[tc]: DC (tc 0) or AC (tc 1) table th was defined
    unsigned quant = 0;             // bit tq: quantisation table tq was defined
    unsigned char tq_of[256] = {};  // component id -> 1 + its quantisation table, from the frame header
    for (size_t i = 2; i + 3 < n;) {  // from past SOI, while a marker and its length fit
        const unsigned m = p[i + 1];
        if (p[i] != 0xFF || m == 0xFF) {  // data, padding or fill bytes
            ++i;
            continue;
        }
        if (m == 0xD9) break;  // EOI: stb reads no further
        if (m == 0x00 || m == 0x01 || (m >= 0xD0 && m <= 0xD8)) {  // stuffed 0xFF, TEM, RSTn, SOI: no length
            i += 2;
            continue;
        }
        const size_t len = size_t(p[i + 2]) << 8 | p[i + 3], end = i + 2 + len;
        if ((m == 0xC0 || m == 0xC1 || m == 0xC2) && i + 9 < n) {  // the frames stb decodes
            progressive = m == 0xC2;
            for (size_t c = 0, nf = p[i + 9]; c < nf && i + 12 + 3 * c < n; ++c)  // (id, HV, Tq) triples
                tq_of[p[i + 10 + 3 * c]] = static_cast<unsigned char>(1 + (p[i + 12 + 3 * c] & 15));
        }
        if (m == 0xDB)  // DQT: (precision << 4 | Tq) then 64 values of 1 or 2 bytes, while they fit
            for (size_t t = i + 4; t < end && t < n; t += 1 + 64 * (p[t] >> 4 ? 2 : 1))
                quant |= 1u << (p[t] & 15);
        // DHT: tables while stb's remaining length L = len - 2 - consumed is positive. stb reads
        // bytes past the end of the file as 0, so a table cut by the end counts (a fuzzer find).
        const auto at = [&](size_t k) -> unsigned { return k < n ? p[k] : 0; };
        if (m == 0xC4)
            for (size_t t = i + 4; t < end && t < n;) {
                unsigned count = 0, longest = 0;
                for (unsigned k = 1; k <= 16; ++k)
                    if (at(t + k)) count += at(t + k), longest = k;
                if (count > 256)
                    return "corrupt JPEG: a Huffman table of " + std::to_string(count) + " codes (at most 256)";
                if (count == 256 && longest <= 9)
                    return "a JPEG Huffman table of 256 codes none longer than " + std::to_string(longest) +
                           " bits, which stb_image 2.27 decodes wrongly";
                if (p[t] >> 4 <= 1 && (p[t] & 15) <= 3) defined[p[t] >> 4] |= 1u << (p[t] & 15);
                t += 17 + count;
            }
        if (m == 0xDA && i + 4 < n) {  // SOS: Ns, then (component, DC<<4 | AC) pairs, then Ss, Se, Ah<<4 | Al
            const size_t ns = p[i + 4], after = i + 5 + 2 * ns;
            if (after + 2 < n) {
                const bool dc_scan = p[after] == 0;  // Ss = 0
                const bool uses_dc = !progressive || (dc_scan && p[after + 2] >> 4 == 0);
                const bool uses_ac = !progressive || !dc_scan;
                for (size_t c = 0; c < ns; ++c) {
                    const unsigned dc = p[i + 6 + 2 * c] >> 4, ac = p[i + 6 + 2 * c] & 15;
                    const unsigned tq = tq_of[p[i + 5 + 2 * c]];
                    if (tq >= 1 && tq <= 4 && !(quant >> (tq - 1) & 1))
                        return "corrupt JPEG: a scan uses quantisation table " + std::to_string(tq - 1) +
                               ", not defined before it";
                    if (uses_dc && dc <= 3 && !(defined[0] >> dc & 1))
                        return "corrupt JPEG: a scan decodes with DC Huffman table " + std::to_string(dc) +
                               ", not defined before it";
                    if (uses_ac && ac <= 3 && !(defined[1] >> ac & 1))
                        return "corrupt JPEG: a scan decodes with AC Huffman table " + std::to_string(ac) +
                               ", not defined before it";
                }
            }
        }
        i = end;
    }
    const std::string_view b(reinterpret_cast<const char*>(p), n);
    const size_t sos = b.rfind("\xFF\xDA");
    if (sos != b.npos && b.find("\xFF\xD9", sos) == b.npos)
        return "truncated JPEG: no end-of-image marker after the last scan";
    return "";
}

// stb_image 2.27 grows its buffer for a PNG's image data to what each IDAT chunk's length
// field declares before reading it: a 70-byte file declaring an 800 MB chunk made it
// allocate 800 MB (found by libFuzzer against -malloc_limit_mb). Every chunk must fit in the
// file, so stb's buffer stays within twice the file's size. Returns "" or the fault.
inline std::string png_fault(const unsigned char* p, size_t n) {
    for (size_t at = 8; at + 8 <= n;) {  // length, type, data, CRC
        const size_t len = size_t(p[at]) << 24 | size_t(p[at + 1]) << 16 | size_t(p[at + 2]) << 8 | p[at + 3];
        const std::string type(reinterpret_cast<const char*>(p + at + 4), 4);
        if (len > n - at - 8 || n - at - 8 - len < 4)
            return "truncated PNG: chunk '" + type + "' declares " + std::to_string(len) + " bytes, the file holds " +
                   std::to_string(n - at - 8) + " more";
        if (type == "IEND") break;
        at += 12 + len;
    }
    return "";
}

}  // namespace detail

// Decodes bytes already in memory; the same checks and messages as try_decode_image.
inline std::string try_decode_image_memory(const unsigned char* data, size_t size, Image& out) {
    if (size == 0) return "the file is empty";
    if (size > size_t(max_image_file_bytes))
        return std::to_string(size) + " bytes is over the limit of " + std::to_string(max_image_file_bytes) +
               " (tlcpu::max_image_file_bytes)";
    const char* format = detail::image_format(data, size);
    if (!format) return "not a decodable image (not JPEG, PNG or BMP)";
    const std::string why = format[0] == 'J' ? detail::jpeg_fault(data, size)
                            : format[0] == 'P' ? detail::png_fault(data, size) : "";
    if (!why.empty()) return "not a decodable image (" + why + ")";
    int w = 0, h = 0, c = 0;
    if (stbi_info_from_memory(data, int(size), &w, &h, &c) && int64_t(w) * h > max_image_pixels)
        return std::to_string(w) + "x" + std::to_string(h) + " pixels is over the limit of " +
               std::to_string(max_image_pixels) + " (tlcpu::max_image_pixels); refused before decoding";
    // Forcing 3 components makes stb convert gray and RGBA to RGB (alpha dropped, as PIL's
    // convert("RGB") does); c still reports what the file holds.
    unsigned char* px = stbi_load_from_memory(data, int(size), &w, &h, &c, 3);
    if (!px) {
        const char* why = stbi_failure_reason();  // a static string, thread-local since stb 2.26
        return std::string("not a decodable image (") + (why ? why : "unknown reason") + ")";
    }
    if (w <= 0 || h <= 0) {  // stb 2.27 accepts a BMP declaring a height of 0 (a fuzzer find)
        stbi_image_free(px);
        return "not a decodable image (" + std::to_string(w) + "x" + std::to_string(h) + " pixels)";
    }
    out.width = w;
    out.height = h;
    out.channels = c;
    out.rgb.assign(px, px + size_t(w) * size_t(h) * 3);
    stbi_image_free(px);
    return "";
}

// Decodes without throwing, so it can run inside an OpenMP loop: returns "" on success,
// otherwise why the file is unusable (the caller names the file).
inline std::string try_decode_image(const std::string& path, Image& out) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return "cannot open the file";
    // Read at most one byte past the limit: enough to refuse the file without holding it.
    std::vector<unsigned char> bytes;
    const size_t cap = size_t(max_image_file_bytes) + 1;
    for (char buf[1 << 16]; bytes.size() < cap && in;) {
        in.read(buf, std::streamsize(std::min(sizeof buf, cap - bytes.size())));
        bytes.insert(bytes.end(), buf, buf + in.gcount());
    }
    if (in.bad()) return "read error";
    if (bytes.size() == cap)
        return "over " + std::to_string(max_image_file_bytes) +
               " bytes (tlcpu::max_image_file_bytes); refused before reading the rest";
    return try_decode_image_memory(bytes.data(), bytes.size(), out);
}

inline Image decode_image(const std::string& path) {
    Image im;
    if (std::string why = try_decode_image(path, im); !why.empty()) fail(path + ": " + why);
    return im;
}

// Antialiased resize into `dst` (width x height x 3). stb's defaults (Mitchell when shrinking,
// Catmull-Rom when enlarging) are chosen per axis; an axis kept at its size gets Catmull-Rom,
// which is exactly the identity there (stb's default would pick Mitchell and blur it).
inline void resize_into(const Image& im, int width, int height, uint8_t* dst) {
    if (im.width == width && im.height == height) {
        std::memcpy(dst, im.rgb.data(), size_t(width) * size_t(height) * 3);
        return;
    }
    auto filter = [](int from, int to) { return to < from ? STBIR_FILTER_MITCHELL : STBIR_FILTER_CATMULLROM; };
    if (!stbir_resize(im.rgb.data(), im.width, im.height, 0, dst, width, height, 0, STBIR_TYPE_UINT8, 3,
                      STBIR_ALPHA_CHANNEL_NONE, 0, STBIR_EDGE_CLAMP, STBIR_EDGE_CLAMP, filter(im.width, width),
                      filter(im.height, height), STBIR_COLORSPACE_LINEAR, nullptr))
        fail("resizing a " + std::to_string(im.width) + "x" + std::to_string(im.height) + " image failed");
}

inline Image resize(const Image& im, int width, int height) {
    Image out{width, height, std::vector<uint8_t>(size_t(width) * height * 3)};
    resize_into(im, width, height, out.rgb.data());
    return out;
}

// Nearest-neighbour resize exactly as PIL's Image.resize(NEAREST) (what Keras' load_img
// uses by default): source x = floor(x_in_centre), with the centre stepped by in/out in
// double precision the way Pillow's ImagingScaleAffine accumulates it.
inline void resize_nearest_into(const Image& im, int width, int height, uint8_t* dst) {
    std::vector<int> xs(size_t(width), 0);
    const double ax = double(im.width) / width, ay = double(im.height) / height;
    double xo = ax * 0.5;
    for (int x = 0; x < width; ++x, xo += ax) xs[size_t(x)] = std::min(int(xo), im.width - 1);
    double yo = ay * 0.5;
    for (int y = 0; y < height; ++y, yo += ay) {
        const uint8_t* row = im.rgb.data() + size_t(std::min(int(yo), im.height - 1)) * size_t(im.width) * 3;
        uint8_t* out = dst + size_t(y) * size_t(width) * 3;
        for (int x = 0; x < width; ++x) std::memcpy(out + 3 * x, row + 3 * xs[size_t(x)], 3);
    }
}

inline Image resize_nearest(const Image& im, int width, int height) {
    Image out{width, height, std::vector<uint8_t>(size_t(width) * height * 3)};
    resize_nearest_into(im, width, height, out.rgb.data());
    return out;
}

// caffe: BGR, 0..255, minus a per-channel mean (given in B, G, R order); no scaling.
// torch: RGB, /255, minus the ImageNet mean, divided by its std.
enum class Preprocess { caffe, torch };
inline constexpr std::array<float, 3> keras_caffe_mean_bgr{103.939f, 116.779f, 123.68f};
inline constexpr std::array<float, 3> torch_mean_rgb{0.485f, 0.456f, 0.406f}, torch_std_rgb{0.229f, 0.224f, 0.225f};

// The value output channel c (0..2, in the mode's channel order) takes for the 8-bit input
// v of source channel (caffe ? 2 - c : c). One expression, so every path agrees bit for bit.
inline float preprocess_value(Preprocess mode, int c, float v, const std::array<float, 3>& caffe_mean_bgr) {
    return mode == Preprocess::caffe ? v - caffe_mean_bgr[size_t(c)]
                                     : (v / 255.f - torch_mean_rgb[size_t(c)]) / torch_std_rgb[size_t(c)];
}

// Writes one preprocessed image as [3, H, W] floats at `dst`.
inline void preprocess(const Image& im, Preprocess mode, float* dst,
                       std::array<float, 3> caffe_mean_bgr = keras_caffe_mean_bgr) {
    const size_t hw = size_t(im.width) * im.height;
    for (size_t i = 0; i < hw; ++i) {
        const uint8_t* p = &im.rgb[3 * i];
        for (int c = 0; c < 3; ++c) {
            const int src = mode == Preprocess::caffe ? 2 - c : c;
            dst[size_t(c) * hw + i] = preprocess_value(mode, c, float(p[src]), caffe_mean_bgr);
        }
    }
}

}  // namespace tlcpu

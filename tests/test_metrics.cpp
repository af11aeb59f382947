// Tests for tlcpu/metrics/classification.hpp and tlcpu/report/html.hpp.
//
// The metrics are checked on fixed predictions against numbers worked out by hand below, and
// every text() literal here is scikit-learn 1.2.1's own output for the same call,
//   classification_report(y_true, y_pred, labels=range(K), target_names=classes,
//                         digits=d, zero_division=0),
// pasted verbatim (including its quirks: "micro avg" when a class occurs nowhere, float
// supports when nothing is predicted correctly). The HTML report is checked for the pieces a
// reader relies on: escaped text, the charts, the phase boundary, lossless thumbnails.
#include <doctest/doctest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <stb_image.h>

#include "tlcpu/metrics/classification.hpp"
#include "tlcpu/report/html.hpp"

namespace tlcpu_test_metrics {

namespace fs = std::filesystem;
using namespace tlcpu;

namespace {

// y_true / y_pred laid out from a confusion matrix (rows = true class).
void from_confusion(const std::vector<std::vector<int>>& cm, std::vector<int>& yt, std::vector<int>& yp) {
    for (size_t t = 0; t < cm.size(); ++t)
        for (size_t p = 0; p < cm[t].size(); ++p)
            for (int i = 0; i < cm[t][p]; ++i) yt.push_back(int(t)), yp.push_back(int(p));
}

size_t count_of(const std::string& hay, const std::string& needle) {
    size_t n = 0;
    for (size_t at = hay.find(needle); at != std::string::npos; at = hay.find(needle, at + needle.size())) ++n;
    return n;
}

std::vector<uint8_t> base64_decode(const std::string& s) {
    auto val = [](char c) -> int {
        if (c >= 'A' && c <= 'Z') return c - 'A';
        if (c >= 'a' && c <= 'z') return c - 'a' + 26;
        if (c >= '0' && c <= '9') return c - '0' + 52;
        return c == '+' ? 62 : c == '/' ? 63 : -1;
    };
    std::vector<uint8_t> out;
    uint32_t acc = 0;
    int bits = 0;
    for (char c : s) {
        const int v = val(c);
        if (v < 0) break;  // '=' padding ends the data
        acc = acc << 6 | uint32_t(v);
        bits += 6;
        if (bits >= 8) bits -= 8, out.push_back(uint8_t(acc >> bits & 0xFF));
    }
    return out;
}

// The golden case: 3 classes, 10 samples.
//              predicted: cat dog bird   support
//   true cat              3   1   0      4
//   true dog              0   2   1      3
//   true bird             1   1   1      3
//   predicted totals      4   4   2
ClassificationReport golden() {
    std::vector<int> yt, yp;
    from_confusion({{3, 1, 0}, {0, 2, 1}, {1, 1, 1}}, yt, yp);
    return classification_report(yt, yp, {"cat", "dog", "bird"});
}

}  // namespace

TEST_SUITE("unit") {

TEST_CASE("classification_report: hand-computed golden case, 3 classes and 10 samples") {
    const auto r = golden();
    CHECK(r.n == 10);
    CHECK(r.classes == std::vector<std::string>{"cat", "dog", "bird"});
    CHECK(r.confusion == std::vector<std::vector<int64_t>>{{3, 1, 0}, {0, 2, 1}, {1, 1, 1}});
    REQUIRE(r.per_class.size() == 3);
    // accuracy = trace / n = (3 + 2 + 1) / 10
    CHECK(r.accuracy == 0.6);
    // cat: tp 3, predicted 4, true 4 -> p = 3/4, r = 3/4, f1 = 3/4
    CHECK(r.per_class[0].precision == 0.75);
    CHECK(r.per_class[0].recall == 0.75);
    CHECK(r.per_class[0].f1 == 0.75);
    CHECK(r.per_class[0].support == 4);
    // dog: tp 2, predicted 4, true 3 -> p = 1/2, r = 2/3, f1 = 2(1/2)(2/3)/(1/2 + 2/3) = (2/3)/(7/6) = 4/7
    CHECK(r.per_class[1].precision == 0.5);
    CHECK(r.per_class[1].recall == doctest::Approx(2.0 / 3).epsilon(1e-15));
    CHECK(r.per_class[1].f1 == doctest::Approx(4.0 / 7).epsilon(1e-15));
    CHECK(r.per_class[1].support == 3);
    // bird: tp 1, predicted 2, true 3 -> p = 1/2, r = 1/3, f1 = 2(1/6)/(5/6) = 2/5
    CHECK(r.per_class[2].precision == 0.5);
    CHECK(r.per_class[2].recall == doctest::Approx(1.0 / 3).epsilon(1e-15));
    CHECK(r.per_class[2].f1 == doctest::Approx(0.4).epsilon(1e-15));
    CHECK(r.per_class[2].support == 3);
    // macro: unweighted means. p = (3/4 + 1/2 + 1/2)/3 = 7/12; r = (3/4 + 2/3 + 1/3)/3 = 7/12;
    // f1 = (3/4 + 4/7 + 2/5)/3 = (105 + 80 + 56)/140/3 = 241/420
    CHECK(r.macro_avg.precision == doctest::Approx(7.0 / 12).epsilon(1e-15));
    CHECK(r.macro_avg.recall == doctest::Approx(7.0 / 12).epsilon(1e-15));
    CHECK(r.macro_avg.f1 == doctest::Approx(241.0 / 420).epsilon(1e-15));
    CHECK(r.macro_avg.support == 10);
    // weighted by support 4, 3, 3: p = (4(3/4) + 3(1/2) + 3(1/2))/10 = 6/10; r = (3 + 2 + 1)/10 = 6/10
    // (always the accuracy); f1 = (4(3/4) + 3(4/7) + 3(2/5))/10 = (3 + 12/7 + 6/5)/10 = 207/350
    CHECK(r.weighted_avg.precision == doctest::Approx(0.6).epsilon(1e-15));
    CHECK(r.weighted_avg.recall == doctest::Approx(0.6).epsilon(1e-15));
    CHECK(r.weighted_avg.f1 == doctest::Approx(207.0 / 350).epsilon(1e-15));
    CHECK(r.weighted_avg.support == 10);
}

TEST_CASE("text(): byte for byte scikit-learn's classification_report on the golden case") {
    // sklearn 1.2.1: classification_report([0,0,0,0,1,1,1,2,2,2], [0,0,0,1,1,1,2,0,1,2],
    //                labels=[0,1,2], target_names=["cat","dog","bird"], zero_division=0)
    const std::string expected =
        "              precision    recall  f1-score   support\n"
        "\n"
        "         cat       0.75      0.75      0.75         4\n"
        "         dog       0.50      0.67      0.57         3\n"
        "        bird       0.50      0.33      0.40         3\n"
        "\n"
        "    accuracy                           0.60        10\n"
        "   macro avg       0.58      0.58      0.57        10\n"
        "weighted avg       0.60      0.60      0.59        10\n";
    CHECK(golden().text() == expected);
    CHECK(golden().text(2) == expected);
}

TEST_CASE("a class never predicted: precision 0 by zero_division, f1 0, no NaN; long name widens the layout") {
    //               predicted: glioma meningioma notumor   support
    //   true glioma            2      0          0         2
    //   true meningioma        1      1          0         2
    //   true notumor           1      1          0         2
    //   predicted totals       4      2          0
    const std::vector<std::string> classes = {"glioma", "meningioma", "notumor, never predicted"};
    const auto r = classification_report({0, 0, 1, 1, 2, 2}, {0, 0, 1, 0, 1, 0}, classes);
    // glioma: p = 2/4, r = 2/2, f1 = 2(1/2)(1)/(3/2) = 2/3
    CHECK(r.per_class[0].precision == 0.5);
    CHECK(r.per_class[0].recall == 1.0);
    CHECK(r.per_class[0].f1 == doctest::Approx(2.0 / 3).epsilon(1e-15));
    // meningioma: p = 1/2, r = 1/2, f1 = 1/2
    CHECK(r.per_class[1].f1 == 0.5);
    // notumor: tp 0, predicted 0 -> precision 0/0 := 0; recall 0/2 = 0; p + r = 0 -> f1 := 0
    CHECK(r.per_class[2].precision == 0.0);
    CHECK(r.per_class[2].recall == 0.0);
    CHECK(r.per_class[2].f1 == 0.0);
    CHECK(r.per_class[2].support == 2);
    CHECK(r.accuracy == 0.5);
    // macro p = (1/2 + 1/2 + 0)/3 = 1/3, r = (1 + 1/2 + 0)/3 = 1/2, f1 = (2/3 + 1/2 + 0)/3 = 7/18
    CHECK(r.macro_avg.precision == doctest::Approx(1.0 / 3).epsilon(1e-15));
    CHECK(r.macro_avg.recall == doctest::Approx(0.5).epsilon(1e-15));
    CHECK(r.macro_avg.f1 == doctest::Approx(7.0 / 18).epsilon(1e-15));
    // weighted (supports 2, 2, 2) equals macro here
    CHECK(r.weighted_avg.precision == doctest::Approx(1.0 / 3).epsilon(1e-15));
    CHECK(r.weighted_avg.f1 == doctest::Approx(7.0 / 18).epsilon(1e-15));
    for (const auto& m : r.per_class) CHECK(std::isfinite(m.precision + m.recall + m.f1));
    // sklearn 1.2.1, digits=3
    CHECK(r.text(3) ==
          "                          precision    recall  f1-score   support\n"
          "\n"
          "                  glioma      0.500     1.000     0.667         2\n"
          "              meningioma      0.500     0.500     0.500         2\n"
          "notumor, never predicted      0.000     0.000     0.000         2\n"
          "\n"
          "                accuracy                          0.500         6\n"
          "               macro avg      0.333     0.500     0.389         6\n"
          "            weighted avg      0.333     0.500     0.389         6\n");
}

TEST_CASE("text(): sklearn's two quirks, reproduced") {
    SUBCASE("a class absent from both y_true and y_pred turns the accuracy row into 'micro avg'") {
        const auto r = classification_report({0, 1, 1, 0}, {0, 1, 0, 0}, {"a", "b", "c"});
        CHECK(r.text() ==
              "              precision    recall  f1-score   support\n"
              "\n"
              "           a       0.67      1.00      0.80         2\n"
              "           b       1.00      0.50      0.67         2\n"
              "           c       0.00      0.00      0.00         0\n"
              "\n"
              "   micro avg       0.75      0.75      0.75         4\n"
              "   macro avg       0.56      0.50      0.49         4\n"
              "weighted avg       0.83      0.75      0.73         4\n");
    }
    SUBCASE("no correct prediction at all: supports print as floats; widths count code points, not bytes") {
        // "méningiome (grade 2)": 20 code points, 21 bytes of UTF-8
        const auto r = classification_report({0, 1, 1}, {1, 0, 0}, {"méningiome (grade 2)", "b"});
        CHECK(r.accuracy == 0.0);
        CHECK(r.text() ==
              "                      precision    recall  f1-score   support\n"
              "\n"
              "méningiome (grade 2)       0.00      0.00      0.00       1.0\n"
              "                   b       0.00      0.00      0.00       2.0\n"
              "\n"
              "            accuracy                           0.00       3.0\n"
              "           macro avg       0.00      0.00      0.00       3.0\n"
              "        weighted avg       0.00      0.00      0.00       3.0\n");
    }
}

TEST_CASE("averages are summed in numpy's pairwise order, so their last bit matches sklearn") {
    // 9 classes exercise numpy's 8-accumulator block. Class c has c+1 samples; for c > 0 the
    // first of them is predicted as c-1, the rest correctly. Reference: sklearn 1.2.1,
    // float.hex() of precision_recall_fscore_support(..., average=...)[:3].
    std::vector<int> yt, yp;
    std::vector<std::string> names;
    for (int c = 0; c < 9; ++c) {
        names.push_back("c" + std::to_string(c));
        for (int i = 0; i < c + 1; ++i) yt.push_back(c), yp.push_back(i == 0 && c > 0 ? c - 1 : c);
    }
    const auto r = classification_report(yt, yp, names);
    CHECK(r.macro_avg.precision == std::stod("0x1.81d41d41d41d4p-1"));
    CHECK(r.macro_avg.recall == std::stod("0x1.97f3b81f1029ep-1"));
    CHECK(r.macro_avg.f1 == std::stod("0x1.87f6b19d4c06fp-1"));
    CHECK(r.weighted_avg.precision == std::stod("0x1.aaaaaaaaaaaabp-1"));
    CHECK(r.weighted_avg.recall == std::stod("0x1.a4fa4fa4fa4fap-1"));
    CHECK(r.weighted_avg.f1 == std::stod("0x1.a68a185134c2fp-1"));
    // a plain left-to-right sum lands one ulp away here, so the check above can tell them apart
    double naive = 0;
    for (const auto& m : r.per_class) naive += m.f1 * double(m.support);
    CHECK(naive / double(r.n) != r.weighted_avg.f1);
}

TEST_CASE("confusion_text: class names on both axes, counts right-aligned under them") {
    CHECK(golden().confusion_text() ==
          "true \\ predicted  cat  dog  bird\n"
          "cat                 3    1     0\n"
          "dog                 0    2     1\n"
          "bird                1    1     1\n");
}

TEST_CASE("classification_report rejects bad input with an Error that says what is wrong") {
    CHECK_THROWS_WITH_AS(classification_report({0, 1}, {0}, {"a", "b"}),
                         doctest::Contains("2 true labels but 1 predictions"), Error);
    CHECK_THROWS_WITH_AS(classification_report({0, 2}, {0, 1}, {"a", "b"}),
                         doctest::Contains("sample 1: true label 2 is not a class index"), Error);
    CHECK_THROWS_WITH_AS(classification_report({0, 1}, {-1, 1}, {"a", "b"}),
                         doctest::Contains("sample 0: predicted label -1"), Error);
    CHECK_THROWS_WITH_AS(classification_report({0, 1}, {0, 1}, {"a", "a"}), doctest::Contains("'a' appears twice"),
                         Error);
    CHECK_THROWS_WITH_AS(classification_report({}, {}, {"a"}), doctest::Contains("no samples"), Error);
    CHECK_THROWS_AS(golden().text(-1), Error);
}

TEST_CASE("to_json: exactly the documented keys; from_json round-trips every field") {
    const auto r = golden();
    const nlohmann::json j = r.to_json();
    std::set<std::string> keys;
    for (const auto& [k, v] : j.items()) keys.insert(k);
    CHECK(keys == std::set<std::string>{"n", "accuracy", "classes", "confusion", "per_class", "macro_avg", "weighted_avg"});
    const std::set<std::string> metric_keys = {"precision", "recall", "f1", "support"};
    auto keys_of = [](const nlohmann::json& o) {
        std::set<std::string> s;
        for (const auto& [k, v] : o.items()) s.insert(k);
        return s;
    };
    CHECK(keys_of(j["per_class"]) == std::set<std::string>{"cat", "dog", "bird"});
    for (const auto& [name, m] : j["per_class"].items()) CHECK(keys_of(m) == metric_keys);
    CHECK(keys_of(j["macro_avg"]) == metric_keys);
    CHECK(keys_of(j["weighted_avg"]) == metric_keys);
    CHECK(j["classes"] == nlohmann::json{"cat", "dog", "bird"});  // order kept: it indexes the confusion
    CHECK(j["confusion"] == nlohmann::json{{3, 1, 0}, {0, 2, 1}, {1, 1, 1}});
    CHECK(j["per_class"]["dog"]["recall"].get<double>() == r.per_class[1].recall);
    CHECK(j["weighted_avg"]["support"].get<int64_t>() == 10);

    // through text, as a file would carry it
    const auto back = ClassificationReport::from_json(nlohmann::json::parse(j.dump()));
    CHECK(back.n == r.n);
    CHECK(back.accuracy == r.accuracy);
    CHECK(back.classes == r.classes);
    CHECK(back.confusion == r.confusion);
    REQUIRE(back.per_class.size() == r.per_class.size());
    for (size_t c = 0; c < r.per_class.size(); ++c) {
        CHECK(back.per_class[c].precision == r.per_class[c].precision);
        CHECK(back.per_class[c].recall == r.per_class[c].recall);
        CHECK(back.per_class[c].f1 == r.per_class[c].f1);
        CHECK(back.per_class[c].support == r.per_class[c].support);
    }
    CHECK(back.macro_avg.f1 == r.macro_avg.f1);
    CHECK(back.weighted_avg.precision == r.weighted_avg.precision);
    CHECK(back.text() == r.text());
    CHECK(back.to_json() == j);
}

TEST_CASE("from_json rejects a missing key, a wrong shape and inconsistent counts") {
    const nlohmann::json good = golden().to_json();
    auto without = [&](const char* key) {
        nlohmann::json j = good;
        j.erase(key);
        return j;
    };
    CHECK_THROWS_WITH_AS(ClassificationReport::from_json(without("weighted_avg")),
                         doctest::Contains("has no \"weighted_avg\""), Error);
    nlohmann::json j = good;
    j["confusion"][1] = {0, 2};
    CHECK_THROWS_WITH_AS(ClassificationReport::from_json(j), doctest::Contains("\"confusion\" row"), Error);
    j = good;
    j["n"] = 11;
    CHECK_THROWS_WITH_AS(ClassificationReport::from_json(j), doctest::Contains("counts 10 samples but \"n\" is 11"), Error);
    j = good;
    j["per_class"]["dog"]["support"] = "3";
    CHECK_THROWS_WITH_AS(ClassificationReport::from_json(j), doctest::Contains("\"support\" is not an integer"), Error);
    j = good;
    j["per_class"].erase("bird");
    CHECK_THROWS_AS(ClassificationReport::from_json(j), Error);
    CHECK_NOTHROW(ClassificationReport::from_json(good));
}

}  // TEST_SUITE("unit")

namespace {

ReportInput report_input(int phases = 2) {
    ReportInput in;
    in.title = "run <&> \"quoted\"";
    in.settings = {{"batch", "32"}, {"optimizer <b>", "Adam & co"}};
    for (int e = 0; e < 8; ++e)
        in.history.push_back({1, e, 1.0 - 0.05 * e, 0.6 + 0.03 * e, 1.1 - 0.05 * e, 0.55 + 0.03 * e, 1e-3, 90});
    if (phases == 2)
        for (int e = 0; e < 6; ++e)
            in.history.push_back({2, e, 0.5 - 0.03 * e, 0.85 + 0.01 * e, 0.6 - 0.03 * e, 0.8 + 0.01 * e, 1e-5, 300});
    std::vector<int> yt, yp;
    from_confusion({{5, 1, 0}, {1, 4, 1}, {0, 0, 6}}, yt, yp);
    in.validation = classification_report(yt, yp, {"glioma-x", "menin<gioma>", "pituitary-x"});
    Misclassified m;
    m.path = "/data/val/glioma/img & 1.jpg";
    m.true_class = 0, m.predicted = 1;
    m.probs = {0.3f, 0.6f, 0.1f};
    m.thumb_w = 5, m.thumb_h = 3;
    for (int i = 0; i < 5 * 3 * 3; ++i) m.thumb_rgb.push_back(uint8_t(i * 17 % 256));
    in.misclassified.push_back(m);
    in.notes = "validation split, not test accuracy <i>";
    return in;
}

}  // namespace

TEST_SUITE("unit") {

TEST_CASE("render_html: escaped title and text, class names, charts, phase boundary, report table") {
    const ReportInput in = report_input();
    const std::string html = render_html(in);
    CHECK(html.rfind("<!DOCTYPE html>", 0) == 0);
    CHECK(count_of(html, "run &lt;&amp;&gt; &quot;quoted&quot;") == 2);  // <title> and <h1>
    CHECK(html.find("<&>") == std::string::npos);
    CHECK(html.find("menin&lt;gioma&gt;") != std::string::npos);
    CHECK(html.find("menin<gioma>") == std::string::npos);
    CHECK(html.find("glioma-x") != std::string::npos);
    CHECK(html.find("pituitary-x") != std::string::npos);
    CHECK(html.find("optimizer &lt;b&gt;") != std::string::npos);
    CHECK(html.find("Adam &amp; co") != std::string::npos);
    CHECK(html.find("validation split, not test accuracy &lt;i&gt;") != std::string::npos);
    CHECK(count_of(html, "<svg") >= 5);  // loss, accuracy, learning rate, time, confusion
    CHECK(count_of(html, "phase 2: fine-tuning") == 4);  // on each epoch chart
    CHECK(html.find(">predicted</text>") != std::string::npos);
    CHECK(html.find(">true</text>") != std::string::npos);
    CHECK(html.find("<th class=\"num\">f1-score</th>") != std::string::npos);
    CHECK(html.find("<th scope=\"row\">weighted avg</th>") != std::string::npos);
    // the confusion counts are printed in their cells
    CHECK(html.find("class=\"cm-count\" fill=\"#ffffff\">6</text>") != std::string::npos);
    CHECK(html.find("http://") == html.find("http://www.w3.org/2000/svg"));  // no network reference but the SVG namespace
    CHECK(html.find("<script") == std::string::npos);

    // one phase: no boundary
    CHECK(render_html(report_input(1)).find("phase 2: fine-tuning") == std::string::npos);
}

TEST_CASE("render_html: the thumbnail is a PNG data: URI holding exactly the given pixels") {
    const ReportInput in = report_input();
    const std::string html = render_html(in);
    const std::string tag = "data:image/png;base64,";
    const size_t at = html.find(tag);
    REQUIRE(at != std::string::npos);
    CHECK(count_of(html, tag) == 1);
    const size_t end = html.find('"', at);
    const auto png = base64_decode(html.substr(at + tag.size(), end - at - tag.size()));
    REQUIRE(png.size() > 8);
    const std::vector<uint8_t> signature = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    CHECK(std::vector<uint8_t>(png.begin(), png.begin() + 8) == signature);
    int w = 0, h = 0, c = 0;
    unsigned char* px = stbi_load_from_memory(png.data(), int(png.size()), &w, &h, &c, 3);
    REQUIRE(px);
    CHECK(w == 5);
    CHECK(h == 3);
    CHECK(std::vector<uint8_t>(px, px + 45) == in.misclassified[0].thumb_rgb);
    stbi_image_free(px);
    // with the true and predicted class and every class's probability
    CHECK(html.find("true: glioma-x") != std::string::npos);
    CHECK(html.find("predicted: menin&lt;gioma&gt;") != std::string::npos);
    CHECK(html.find(">60.0%<") != std::string::npos);
    CHECK(html.find(">30.0%<") != std::string::npos);
    CHECK(html.find(">10.0%<") != std::string::npos);
    CHECK(html.find("img &amp; 1.jpg") != std::string::npos);
}

TEST_CASE("render_html: at most 24 thumbnails; bad misclassified entries are an Error naming the file") {
    ReportInput in = report_input();
    in.misclassified.assign(30, in.misclassified[0]);
    CHECK(count_of(render_html(in), "data:image/png;base64,") == max_misclassified_shown);

    in = report_input();
    in.misclassified[0].predicted = 3;
    CHECK_THROWS_WITH_AS(render_html(in), doctest::Contains("img & 1.jpg"), Error);
    in = report_input();
    in.misclassified[0].thumb_rgb.pop_back();
    CHECK_THROWS_WITH_AS(render_html(in), doctest::Contains("not 5x3x3"), Error);
    in = report_input();
    in.misclassified[0].probs.pop_back();
    CHECK_THROWS_WITH_AS(render_html(in), doctest::Contains("2 probabilities for 3 classes"), Error);
}

TEST_CASE("write_html: writes render_html's bytes atomically; an unwritable path is an Error naming it") {
    const fs::path dir = fs::temp_directory_path() / ("tlcpu_test_html_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    const std::string path = (dir / "report.html").string();
    {
        std::ofstream old(path);
        old << "old report";
    }
    const ReportInput in = report_input();
    write_html(path, in);
    std::ifstream f(path, std::ios::binary);
    std::stringstream ss;
    ss << f.rdbuf();
    CHECK(ss.str() == render_html(in));
    size_t files = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir)) ++files;
    CHECK(files == 1);  // no temporary left behind
    fs::remove_all(dir);

    const std::string bad = (dir / "missing-dir" / "report.html").string();
    CHECK_THROWS_WITH_AS(write_html(bad, in), doctest::Contains(bad.c_str()), Error);
}

}  // TEST_SUITE("unit")

}  // namespace tlcpu_test_metrics

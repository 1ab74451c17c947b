// A thin client of llama.cpp's public C API (llama.h) used only to make reference fixtures:
// for one prompt, the token ids llama.cpp gives it, the top-k logits and logsumexp at every
// prompt position, and a greedy continuation of N tokens with the generated ids (llama-completion
// prints only text). Mirrors examples/simple/simple.cpp: prompt tokenized with
// add_special = true (BOS only if the model's GGUF asks for it) and parse_special = true,
// greedy sampler, one sequence, a fresh context. Built by tools/make_llamacpp_fixtures.sh.
//
//   llamacpp_ref MODEL.gguf PROMPT_FILE N_PREDICT TOP_K THREADS > out.json
//
// PROMPT_FILE is read verbatim (no escape processing, trailing newline kept). Output: one JSON
// object; strings are emitted as lists of byte values, so invalid UTF-8 cannot break the JSON.
#include "llama.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

static void print_bytes(const std::string & s) {
    printf("[");
    for (size_t i = 0; i < s.size(); i++) {
        printf(i ? ",%u" : "%u", (unsigned) (unsigned char) s[i]);
    }
    printf("]");
}

static std::string piece(const llama_vocab * vocab, llama_token id) {
    char buf[256];
    int n = llama_token_to_piece(vocab, id, buf, sizeof(buf), 0, true);
    return n < 0 ? std::string() : std::string(buf, n);
}

static void print_dist(const float * logits, int n_vocab, int top_k) {
    double mx = -INFINITY;
    for (int i = 0; i < n_vocab; i++) mx = std::max(mx, (double) logits[i]);
    double sum = 0.0;
    for (int i = 0; i < n_vocab; i++) sum += std::exp((double) logits[i] - mx);
    std::vector<int> idx(n_vocab);
    for (int i = 0; i < n_vocab; i++) idx[i] = i;
    std::partial_sort(idx.begin(), idx.begin() + top_k, idx.end(), [&](int a, int b) {
        return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
    });
    printf("{\"top\":[");
    for (int k = 0; k < top_k; k++) printf(k ? ",[%d,%.6f]" : "[%d,%.6f]", idx[k], logits[idx[k]]);
    printf("],\"logsumexp\":%.6f}", mx + std::log(sum));
}

static void log_quiet(ggml_log_level level, const char * text, void *) {
    if (level == GGML_LOG_LEVEL_ERROR) fputs(text, stderr);
}

int main(int argc, char ** argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: %s MODEL.gguf PROMPT_FILE N_PREDICT TOP_K THREADS\n", argv[0]);
        return 2;
    }
    const std::string model_path = argv[1];
    std::ifstream in(argv[2], std::ios::binary);
    if (!in) { fprintf(stderr, "cannot read %s\n", argv[2]); return 1; }
    std::stringstream ss;
    ss << in.rdbuf();
    const std::string prompt = ss.str();
    const int n_predict = atoi(argv[3]);
    const int top_k = atoi(argv[4]);
    const int n_threads = atoi(argv[5]);

    llama_log_set(log_quiet, nullptr);
    llama_backend_init();
    llama_model_params mparams = llama_model_default_params();
    mparams.n_gpu_layers = 0;
    llama_model * model = llama_model_load_from_file(model_path.c_str(), mparams);
    if (!model) { fprintf(stderr, "cannot load %s\n", model_path.c_str()); return 1; }
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    const int n_prompt = -llama_tokenize(vocab, prompt.c_str(), prompt.size(), NULL, 0, true, true);
    std::vector<llama_token> toks(n_prompt);
    if (llama_tokenize(vocab, prompt.c_str(), prompt.size(), toks.data(), toks.size(), true, true) < 0) {
        fprintf(stderr, "tokenize failed\n");
        return 1;
    }

    llama_context_params cparams = llama_context_default_params();
    cparams.n_ctx = n_prompt + n_predict + 16;
    cparams.n_batch = std::max(n_prompt, 1);
    cparams.n_ubatch = std::max(n_prompt, 1);
    cparams.n_threads = n_threads;
    cparams.n_threads_batch = n_threads;
    llama_context * ctx = llama_init_from_model(model, cparams);
    if (!ctx) { fprintf(stderr, "cannot create context\n"); return 1; }

    printf("{\"add_bos\":%s,\"bos\":%d,\"eos\":%d,\"n_vocab\":%d,\"prompt_ids\":[",
           llama_vocab_get_add_bos(vocab) ? "true" : "false", llama_vocab_bos(vocab), llama_vocab_eos(vocab), n_vocab);
    for (int i = 0; i < n_prompt; i++) printf(i ? ",%d" : "%d", toks[i]);
    printf("],\"positions\":[");

    // the prompt, with logits for every position
    llama_batch batch = llama_batch_init(std::max(n_prompt, 1), 0, 1);
    for (int i = 0; i < n_prompt; i++) {
        batch.token[i] = toks[i];
        batch.pos[i] = i;
        batch.n_seq_id[i] = 1;
        batch.seq_id[i][0] = 0;
        batch.logits[i] = 1;
    }
    batch.n_tokens = n_prompt;
    if (llama_decode(ctx, batch) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
    for (int i = 0; i < n_prompt; i++) {
        if (i) printf(",");
        print_dist(llama_get_logits_ith(ctx, i), n_vocab, top_k);
    }
    printf("],\"steps\":[");

    // greedy continuation: argmax of the logits (the greedy sampler), stop at end of generation
    std::vector<llama_token> gen;
    std::string text;
    int pos = n_prompt;
    const float * logits = llama_get_logits_ith(ctx, n_prompt - 1);
    for (int s = 0; s < n_predict; s++) {
        int best = 0, second = -1;
        for (int i = 1; i < n_vocab; i++) {
            if (logits[i] > logits[best]) { second = best; best = i; }
            else if (second < 0 || logits[i] > logits[second]) { second = i; }
        }
        printf(s ? ",{" : "{");
        printf("\"id\":%d,\"logit\":%.6f,\"runner_up\":%d,\"margin\":%.6f}", best, logits[best], second,
               logits[best] - logits[second]);
        gen.push_back(best);
        if (llama_vocab_is_eog(vocab, best)) break;
        text += piece(vocab, best);
        llama_batch one = llama_batch_get_one(&gen.back(), 1);
        (void) pos;
        if (llama_decode(ctx, one) != 0) { fprintf(stderr, "decode failed\n"); return 1; }
        pos++;
        logits = llama_get_logits_ith(ctx, -1);
    }
    printf("],\"new_ids\":[");
    for (size_t i = 0; i < gen.size(); i++) printf(i ? ",%d" : "%d", gen[i]);
    printf("],\"text_bytes\":");
    print_bytes(text);
    printf("}\n");

    llama_batch_free(batch);
    llama_free(ctx);
    llama_model_free(model);
    llama_backend_free();
    return 0;
}

// Welcomes every new user account: the Rust `greeter` example, in C.
//
// Built by `plugins/build-c.sh` with clang (wasm32-wasi, a reactor) against the
// `handler-only` world of wit/plugin.wit (no database access), through the
// committed `wit-bindgen c` output in bindings/ (plugins/greeter-c/regen-bindings.sh
// regenerates it).
//
// Who frees what (the canonical ABI's rules, as bindings/handler_only.c
// implements them):
//   - `handle`'s argument, the list of events, is the plugin's: the host
//     allocated it in this module's memory with `cabi_realloc` (malloc), and
//     the plugin frees it, here with exports_pgevents_plugin_handler_list_event_free.
//   - What an export returns is freed with free() by its post-return function
//     after the host has copied it (the manifest's strings and lists, a
//     failure's message), so it must come from malloc: never a string literal.
//   - What the plugin passes to an import (the log line) stays the plugin's:
//     the host copies it during the call.
//   - What an import returns (config_get's string) is the plugin's to free.
//
// No JSON library: the new row is JSON text, and this file reads the two
// top-level keys it needs with a small, strict parser (the whole text must be
// one valid JSON object), decoding escapes in strings, \uXXXX with surrogate
// pairs included.

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "handler_only.h"

// ---------------------------------------------------------------------------
// A growable byte buffer on the heap. Running out of memory aborts: a trap,
// which the host retries like any trap.

typedef struct {
    uint8_t *ptr;
    size_t len;
    size_t cap;
} buf_t;

static void buf_reserve(buf_t *b, size_t more) {
    if (more <= b->cap - b->len) {
        return;
    }
    if (more > SIZE_MAX / 2 - b->len) {
        abort();
    }
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->len < more) {
        cap *= 2;
    }
    uint8_t *ptr = realloc(b->ptr, cap);
    if (!ptr) {
        abort();
    }
    b->ptr = ptr;
    b->cap = cap;
}

static void buf_push(buf_t *b, uint8_t byte) {
    buf_reserve(b, 1);
    b->ptr[b->len++] = byte;
}

static void buf_append(buf_t *b, const uint8_t *bytes, size_t len) {
    if (len == 0) {
        return;
    }
    buf_reserve(b, len);
    memcpy(b->ptr + b->len, bytes, len);
    b->len += len;
}

static void buf_append_str(buf_t *b, const char *s) {
    buf_append(b, (const uint8_t *)s, strlen(s));
}

static void buf_append_wit(buf_t *b, const handler_only_string_t *s) {
    buf_append(b, s->ptr, s->len);
}

static void buf_append_u64(buf_t *b, uint64_t v) {
    char digits[20];
    size_t n = 0;
    do {
        digits[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    while (n > 0) {
        buf_push(b, (uint8_t)digits[--n]);
    }
}

static void buf_append_i64(buf_t *b, int64_t v) {
    if (v < 0) {
        buf_push(b, '-');
        // Negate in unsigned arithmetic: INT64_MIN has no positive twin.
        buf_append_u64(b, 0 - (uint64_t)v);
    } else {
        buf_append_u64(b, (uint64_t)v);
    }
}

// Appends the code point `cp` (at most U+10FFFF, not a surrogate) as UTF-8.
static void buf_append_utf8(buf_t *b, uint32_t cp) {
    if (cp < 0x80) {
        buf_push(b, (uint8_t)cp);
    } else if (cp < 0x800) {
        buf_push(b, (uint8_t)(0xC0 | (cp >> 6)));
        buf_push(b, (uint8_t)(0x80 | (cp & 0x3F)));
    } else if (cp < 0x10000) {
        buf_push(b, (uint8_t)(0xE0 | (cp >> 12)));
        buf_push(b, (uint8_t)(0x80 | ((cp >> 6) & 0x3F)));
        buf_push(b, (uint8_t)(0x80 | (cp & 0x3F)));
    } else {
        buf_push(b, (uint8_t)(0xF0 | (cp >> 18)));
        buf_push(b, (uint8_t)(0x80 | ((cp >> 12) & 0x3F)));
        buf_push(b, (uint8_t)(0x80 | ((cp >> 6) & 0x3F)));
        buf_push(b, (uint8_t)(0x80 | (cp & 0x3F)));
    }
}

// Hands the buffer's bytes over as a WIT string, which owns them from then on.
static handler_only_string_t buf_take(buf_t *b) {
    handler_only_string_t s = {b->ptr, b->len};
    b->ptr = NULL;
    b->len = b->cap = 0;
    return s;
}

static bool buf_equals(const buf_t *b, const char *s) {
    size_t n = strlen(s);
    return b->len == n && (n == 0 || memcmp(b->ptr, s, n) == 0);
}

// ---------------------------------------------------------------------------
// JSON (RFC 8259), strictly: what JSON.parse and Python's json.loads accept.

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} cursor_t;

static int peek(const cursor_t *c) { return c->p < c->end ? *c->p : -1; }

static void skip_ws(cursor_t *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) {
        c->p++;
    }
}

static bool eat(cursor_t *c, char ch) {
    if (peek(c) != ch) {
        return false;
    }
    c->p++;
    return true;
}

static int hex_digit(int ch) {
    if (ch >= '0' && ch <= '9') {
        return ch - '0';
    }
    if (ch >= 'a' && ch <= 'f') {
        return ch - 'a' + 10;
    }
    if (ch >= 'A' && ch <= 'F') {
        return ch - 'A' + 10;
    }
    return -1;
}

// Reads the four hex digits after `\u`.
static bool read_hex4(cursor_t *c, uint32_t *out) {
    if (c->end - c->p < 4) {
        return false;
    }
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        int d = hex_digit(c->p[i]);
        if (d < 0) {
            return false;
        }
        v = v << 4 | (uint32_t)d;
    }
    c->p += 4;
    *out = v;
    return true;
}

// Reads a string at the cursor (which is at its opening quote), decoding it
// into `out` if `out` is not NULL. A surrogate that is not half of a pair
// cannot be UTF-8 and becomes U+FFFD.
static bool parse_string(cursor_t *c, buf_t *out) {
    if (!eat(c, '"')) {
        return false;
    }
    for (;;) {
        if (c->p >= c->end) {
            return false;
        }
        uint8_t b = *c->p++;
        if (b == '"') {
            return true;
        }
        if (b < 0x20) {
            return false; // control characters must be escaped
        }
        if (b != '\\') {
            // The text came through a WIT string, so it is valid UTF-8: copy bytes.
            if (out) {
                buf_push(out, b);
            }
            continue;
        }
        if (c->p >= c->end) {
            return false;
        }
        uint8_t e = *c->p++;
        uint8_t simple = 0;
        switch (e) {
        case '"': simple = '"'; break;
        case '\\': simple = '\\'; break;
        case '/': simple = '/'; break;
        case 'b': simple = '\b'; break;
        case 'f': simple = '\f'; break;
        case 'n': simple = '\n'; break;
        case 'r': simple = '\r'; break;
        case 't': simple = '\t'; break;
        case 'u': break;
        default: return false;
        }
        if (e != 'u') {
            if (out) {
                buf_push(out, simple);
            }
            continue;
        }
        uint32_t cp;
        if (!read_hex4(c, &cp)) {
            return false;
        }
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            // A high surrogate: a pair only if `\uDC00`..`\uDFFF` follows. If
            // not, whatever follows is read on its own by the next iteration.
            cursor_t look = *c;
            uint32_t low;
            if (eat(&look, '\\') && eat(&look, 'u') && read_hex4(&look, &low) && low >= 0xDC00 &&
                low <= 0xDFFF) {
                *c = look;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
            } else {
                cp = 0xFFFD;
            }
        } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
            cp = 0xFFFD; // a low surrogate on its own
        }
        if (out) {
            buf_append_utf8(out, cp);
        }
    }
}

static bool is_digit(int ch) { return ch >= '0' && ch <= '9'; }

// Reads a number. `*is_int` tells whether it is an integer in int64's range
// written without a fraction or exponent (what Python's json.loads makes an
// int of), and then `*value` is that integer.
static bool parse_number(cursor_t *c, bool *is_int, int64_t *value) {
    bool negative = eat(c, '-');
    if (!is_digit(peek(c))) {
        return false;
    }
    const uint64_t limit = negative ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX;
    uint64_t magnitude = 0;
    bool fits = true;
    if (eat(c, '0')) {
        // No leading zeros: "01" is not JSON.
    } else {
        while (is_digit(peek(c))) {
            uint64_t d = (uint64_t)(*c->p++ - '0');
            if (fits && magnitude > (limit - d) / 10) {
                fits = false;
            }
            if (fits) {
                magnitude = magnitude * 10 + d;
            }
        }
    }
    bool integral = true;
    if (eat(c, '.')) {
        integral = false;
        if (!is_digit(peek(c))) {
            return false;
        }
        while (is_digit(peek(c))) {
            c->p++;
        }
    }
    if (peek(c) == 'e' || peek(c) == 'E') {
        integral = false;
        c->p++;
        if (!eat(c, '+')) {
            (void)eat(c, '-');
        }
        if (!is_digit(peek(c))) {
            return false;
        }
        while (is_digit(peek(c))) {
            c->p++;
        }
    }
    *is_int = integral && fits;
    if (*is_int) {
        *value = negative ? (magnitude == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)magnitude)
                          : (int64_t)magnitude;
    }
    return true;
}

static bool eat_literal(cursor_t *c, const char *word) {
    size_t n = strlen(word);
    if ((size_t)(c->end - c->p) < n || memcmp(c->p, word, n) != 0) {
        return false;
    }
    c->p += n;
    return true;
}

// Reads a scalar value (string, number, true, false, null).
static bool skip_scalar(cursor_t *c) {
    int ch = peek(c);
    if (ch == '"') {
        return parse_string(c, NULL);
    }
    if (ch == '-' || is_digit(ch)) {
        bool is_int;
        int64_t ignored;
        return parse_number(c, &is_int, &ignored);
    }
    return eat_literal(c, "true") || eat_literal(c, "false") || eat_literal(c, "null");
}

// Reads `"key" :` of an object member.
static bool skip_key(cursor_t *c) {
    skip_ws(c);
    if (!parse_string(c, NULL)) {
        return false;
    }
    skip_ws(c);
    return eat(c, ':');
}

// Reads any value, nested as deep as memory allows: the open arrays and
// objects are a stack on the heap, not the C stack.
static bool skip_value(cursor_t *c) {
    buf_t open = {0}; // '[' or '{' per level
    bool ok = false;
    for (;;) {
        // A value.
        skip_ws(c);
        int ch = peek(c);
        if (ch == '[' || ch == '{') {
            c->p++;
            skip_ws(c);
            if (eat(c, ch == '[' ? ']' : '}')) {
                // Empty: a complete value.
            } else {
                buf_push(&open, (uint8_t)ch);
                if (ch == '{' && !skip_key(c)) {
                    goto done;
                }
                continue; // its first element's value
            }
        } else if (!skip_scalar(c)) {
            goto done;
        }
        // After a value: close levels until one goes on with another value.
        for (;;) {
            if (open.len == 0) {
                ok = true;
                goto done;
            }
            uint8_t level = open.ptr[open.len - 1];
            skip_ws(c);
            if (eat(c, ',')) {
                if (level == '{' && !skip_key(c)) {
                    goto done;
                }
                break;
            }
            if (!eat(c, level == '[' ? ']' : '}')) {
                goto done;
            }
            open.len--;
        }
    }
done:
    free(open.ptr);
    return ok;
}

// What a row of public.user_accounts must have: an integer `id` and a string
// `name` (other columns are ignored; a repeated key counts by its last value,
// as in JSON.parse and json.loads).
typedef struct {
    bool has_id;
    int64_t id;
    bool has_name;
    buf_t name; // UTF-8, may hold any character, NUL included
} user_account_t;

// Reads the JSON text `text` as a user account; false if it is not valid JSON,
// or not an object with an integer `id` and a string `name`.
static bool parse_user_account(const uint8_t *text, size_t len, user_account_t *user) {
    cursor_t c = {text, text + len};
    buf_t key = {0};
    bool ok = false;
    skip_ws(&c);
    if (!eat(&c, '{')) {
        goto done;
    }
    skip_ws(&c);
    if (!eat(&c, '}')) {
        for (;;) {
            skip_ws(&c);
            key.len = 0;
            if (!parse_string(&c, &key)) {
                goto done;
            }
            skip_ws(&c);
            if (!eat(&c, ':')) {
                goto done;
            }
            skip_ws(&c);
            int ch = peek(&c);
            if (buf_equals(&key, "id") && (ch == '-' || is_digit(ch))) {
                if (!parse_number(&c, &user->has_id, &user->id)) {
                    goto done;
                }
            } else if (buf_equals(&key, "name") && ch == '"') {
                user->name.len = 0;
                if (!parse_string(&c, &user->name)) {
                    goto done;
                }
                user->has_name = true;
            } else {
                if (buf_equals(&key, "id")) {
                    user->has_id = false;
                } else if (buf_equals(&key, "name")) {
                    user->has_name = false;
                }
                if (!skip_value(&c)) {
                    goto done;
                }
            }
            skip_ws(&c);
            if (eat(&c, '}')) {
                break;
            }
            if (!eat(&c, ',')) {
                goto done;
            }
        }
    }
    skip_ws(&c);
    ok = c.p == c.end && user->has_id && user->has_name;
done:
    free(key.ptr);
    return ok;
}

// ---------------------------------------------------------------------------
// The handler.

void exports_pgevents_plugin_handler_describe(exports_pgevents_plugin_handler_manifest_t *ret) {
    // Every string and list here is freed by the post-return function: dup them.
    pgevents_plugin_types_subscription_t *subscription = malloc(sizeof *subscription);
    pgevents_plugin_types_operation_t *operations = malloc(sizeof *operations);
    if (!subscription || !operations) {
        abort();
    }
    operations[0] = PGEVENTS_PLUGIN_TYPES_OPERATION_INSERT;
    handler_only_string_dup(&subscription->schema, "public");
    handler_only_string_dup(&subscription->table, "user_accounts");
    subscription->operations = (pgevents_plugin_types_list_operation_t){operations, 1};
    subscription->changed_columns.is_some = false;

    handler_only_string_dup(&ret->name, "greeter-c");
    handler_only_string_dup(&ret->version, "1.0.0");
    ret->subscriptions = (pgevents_plugin_types_list_subscription_t){subscription, 1};
    ret->batch_size = 100;
}

// Fills `err` (its message from `message`, whose bytes move to it).
static void fail(exports_pgevents_plugin_handler_failure_t *err, size_t index, bool permanent,
                 buf_t *message) {
    err->index = (uint32_t)index;
    if (permanent) {
        err->disposition.tag = PGEVENTS_PLUGIN_TYPES_DISPOSITION_PERMANENT;
    } else {
        err->disposition.tag = PGEVENTS_PLUGIN_TYPES_DISPOSITION_RETRY;
        err->disposition.val.retry.is_some = false; // the host's backoff
    }
    err->message = buf_take(message);
}

// Handles one event: true if it went well, else false with `err` filled in.
static bool handle_event(const pgevents_plugin_types_event_t *event, size_t index,
                         exports_pgevents_plugin_handler_failure_t *err) {
    user_account_t user = {0};
    buf_t text = {0};
    bool ok = false;
    const handler_only_option_string_t *row = &event->new_row;
    if (!row->is_some || !parse_user_account(row->val.ptr, row->val.len, &user)) {
        // Retrying cannot fix a row that doesn't decode, so it is permanent.
        buf_append_str(&text, "event ");
        buf_append_wit(&text, &event->id);
        buf_append_str(&text, ": new row of ");
        buf_append_wit(&text, &event->schema);
        buf_append_str(&text, ".");
        buf_append_wit(&text, &event->table);
        buf_append_str(&text, " is not a user account: ");
        if (row->is_some) {
            buf_append_wit(&text, &row->val);
        } else {
            buf_append_str(&text, "(no new row)");
        }
        fail(err, index, true, &text);
        goto done;
    }
    if (buf_equals(&user.name, "retry-me")) {
        // A stand-in for a flaky downstream service: ask for the host's backoff.
        buf_append_str(&text, "event ");
        buf_append_wit(&text, &event->id);
        buf_append_str(&text, ": asked to be retried (attempt ");
        buf_append_u64(&text, event->attempt);
        buf_append_str(&text, ")");
        fail(err, index, false, &text);
        goto done;
    }

    // The log import copies its arguments: they stay ours, to free below.
    buf_append_str(&text, "Welcome, ");
    buf_append(&text, user.name.ptr, user.name.len);
    buf_append_str(&text, "!");
    buf_t id = {0};
    buf_append_i64(&id, user.id);
    handler_only_tuple2_string_string_t field;
    handler_only_string_set(&field.f0, "user_id");
    field.f1 = (handler_only_string_t){id.ptr, id.len};
    handler_only_string_t message = {text.ptr, text.len};
    handler_only_list_tuple2_string_string_t fields = {&field, 1};
    pgevents_plugin_host_log(PGEVENTS_PLUGIN_HOST_LEVEL_INFO, &message, &fields);
    free(id.ptr);
    ok = true;
done:
    free(text.ptr);
    free(user.name.ptr);
    return ok;
}

bool exports_pgevents_plugin_handler_handle(exports_pgevents_plugin_handler_list_event_t *events,
                                            exports_pgevents_plugin_handler_failure_t *err) {
    bool ok = true;
    for (size_t i = 0; i < events->len && ok; i++) {
        ok = handle_event(&events->ptr[i], i, err);
    }
    // The events are ours (the host allocated them with cabi_realloc): free them.
    exports_pgevents_plugin_handler_list_event_free(events);
    return ok;
}

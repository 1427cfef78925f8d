;; An Extism relay plugin against Extism's kernel imports (no PDK): it copies the input into
;; Extism memory the way the C PDK does (8 bytes per host call), hands it to the user host
;; function "transform" (module extism:host/user), and outputs what that returns.
(module
  (import "extism:host/env" "input_length" (func $input_length (result i64)))
  (import "extism:host/env" "input_load_u64" (func $input_load_u64 (param i64) (result i64)))
  (import "extism:host/env" "input_load_u8" (func $input_load_u8 (param i64) (result i32)))
  (import "extism:host/env" "alloc" (func $alloc (param i64) (result i64)))
  (import "extism:host/env" "length" (func $length (param i64) (result i64)))
  (import "extism:host/env" "store_u64" (func $store_u64 (param i64 i64)))
  (import "extism:host/env" "store_u8" (func $store_u8 (param i64 i32)))
  (import "extism:host/env" "output_set" (func $output_set (param i64 i64)))
  (import "extism:host/user" "transform" (func $transform (param i64) (result i64)))
  (memory (export "memory") 1)
  (func (export "relay") (result i32)
    (local $len i64) (local $buf i64) (local $i i64) (local $words i64) (local $out i64)
    (local.set $len (call $input_length))
    (local.set $buf (call $alloc (local.get $len)))
    (local.set $words (i64.and (local.get $len) (i64.const -8)))
    (block $done
      (loop $copy
        (br_if $done (i64.ge_u (local.get $i) (local.get $words)))
        (call $store_u64 (i64.add (local.get $buf) (local.get $i))
                         (call $input_load_u64 (local.get $i)))
        (local.set $i (i64.add (local.get $i) (i64.const 8)))
        (br $copy)))
    (block $tail_done
      (loop $tail
        (br_if $tail_done (i64.ge_u (local.get $i) (local.get $len)))
        (call $store_u8 (i64.add (local.get $buf) (local.get $i))
                        (call $input_load_u8 (local.get $i)))
        (local.set $i (i64.add (local.get $i) (i64.const 1)))
        (br $tail)))
    (local.set $out (call $transform (local.get $buf)))
    (call $output_set (local.get $out) (call $length (local.get $out)))
    (i32.const 0)))

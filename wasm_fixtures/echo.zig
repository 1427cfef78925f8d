//! echo (Zig): returns its input unchanged, with zero copies (out_ptr == input_ptr).
const spear = @import("spear");

comptime {
    spear.handler("echo", echo);
}

fn echo(req: *const spear.Request) spear.Response {
    return spear.output(req.input());
}

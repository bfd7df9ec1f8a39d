# shellcheck shell=bash
# Sourced by build-go-tool.sh and e2e/cluster/build-kubernetes.sh: the step both wrapper
# modules share once their go.mod is written.

# tidy_wrapper DIR: DIR/go.mod.in.new is the freshly generated go.mod. go.mod.in keeps
# what was generated last (`go mod tidy` rewrites go.mod itself), so an unchanged
# wrapper keeps its tidied go.mod and go.sum and a changed one starts afresh.
tidy_wrapper() {
    local wrap=$1
    if ! cmp -s "$wrap/go.mod.in.new" "$wrap/go.mod.in" || [ ! -f "$wrap/go.mod" ]; then
        cp "$wrap/go.mod.in.new" "$wrap/go.mod"
        rm -f "$wrap/go.sum"
    fi
    mv "$wrap/go.mod.in.new" "$wrap/go.mod.in"
    (cd "$wrap" && go mod tidy)
}

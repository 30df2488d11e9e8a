# The header of a pyenroot bundle, as a makeself --header template: makeself sources this file twice (first to
# count the lines it writes, then with SKIP and SHAsum known) and appends its uncompressed tar archive after it.
# At run time the header checks the archive's SHA-256 (bundles made with --checksum), unpacks everything but the
# image into a private directory and hands over to the pyenroot runtime inside, which does the rest (its options,
# unpacking the image, starting the container, removing that directory). Nothing user-given is written into this
# text: the description and target travel in bundle.json.
cat << EOF > "$archname"
#!/bin/sh
# A pyenroot bundle (packed with makeself $MS_VERSION); run it with --help for its options.
skip=$SKIP
sha256=$SHAsum
fail() {
    echo "pyenroot: error: \$1 (bundle)" >&2
    echo "hint: \$2" >&2
    exit 1
}
for tool in python3 tar head tail wc mktemp; do
    command -v "\$tool" >/dev/null 2>&1 || fail "\$tool is not installed" "the bundle needs python3 (3.11 or later) and tar on PATH"
done
case "\$0" in
    /*) bundle="\$0" ;;
    *) bundle="\$(pwd)/\${0#./}" ;;
esac
offset=\$(head -n "\$skip" "\$bundle" | wc -c | tr -d ' ')
if test "\$sha256" != 0000000000000000000000000000000000000000000000000000000000000000; then
    command -v sha256sum >/dev/null 2>&1 || fail "sha256sum is not installed" "the bundle checks its checksum with sha256sum (coreutils)"
    actual=\$(tail -c +\$((offset + 1)) "\$bundle" | sha256sum | cut -c1-64)
    test "\$actual" = "\$sha256" || fail "checksum mismatch: \$bundle is damaged or incomplete" "copy the bundle again"
fi
runtime=\$(mktemp -d "\${TMPDIR:-/tmp}/pyenroot-bundle.XXXXXXXXXX") \
    || fail "cannot create a directory in \${TMPDIR:-/tmp}" "set TMPDIR to a writable directory"
if ! tail -c +\$((offset + 1)) "\$bundle" | tar -x -f - -C "\$runtime" --exclude=./image.sqsh; then
    rm -rf "\$runtime"
    fail "cannot unpack the runtime of \$bundle into \$runtime" "check that \${TMPDIR:-/tmp} has space"
fi
exec python3 -I -S -c '
import sys
if sys.version_info < (3, 11):
    import shutil
    shutil.rmtree(sys.argv[1], ignore_errors=True)
    sys.exit("pyenroot: error: the bundle needs Python 3.11 or later, not " + sys.version.split()[0] + " (bundle)")
sys.path.insert(0, sys.argv[1] + "/lib")
from pyenroot.bundle.runner import main
sys.exit(main(sys.argv[1:]))
' "\$runtime" "\$bundle" "\$offset" "\$@"
EOF

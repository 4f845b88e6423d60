# Sourced by bench/tls.sh and bench/h3.sh: one CA and one ECDSA P-256 leaf for bench.test,
# written to DIR as ca.pem (the CA, for clients), leaf.pem and leaf.key (for the servers).
#
#   bench_certs DIR
bench_certs() {
    local dir=$1
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj "/CN=bench CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=bench.test" -keyout "$dir/leaf.key" -out "$dir/leaf.csr" 2>/dev/null
    printf 'subjectAltName=DNS:bench.test\n' > "$dir/ext.cnf"
    openssl x509 -req -in "$dir/leaf.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
        -days 2 -extfile "$dir/ext.cnf" -out "$dir/leaf.pem" 2>/dev/null
}

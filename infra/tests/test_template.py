"""Checks of infra/template.yaml against the code it deploys.

Plain Python with asserts, run by scripts/check-infra.sh with the .venv-infra interpreter
(cfn-lint's CFN-aware YAML loader, the SAM translator and tomlkit come from there):

    .venv-infra/bin/python infra/tests/test_template.py

Offline: the SAM translator runs in-process with a dummy region and no AWS calls.
"""

import copy
import json
import logging
import os
import re
import sys
from pathlib import Path

import tomlkit
from cfnlint.decode import decode

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
TEMPLATE_PATH = INFRA / "template.yaml"

# The log-level variable the template sets; the code must read it (see test_log_level).
LOG_LEVEL_VAR = "RUST_LOG"

# ---------------------------------------------------------------------------------------------
# Loading
# ---------------------------------------------------------------------------------------------


def load_template():
    template, matches = decode(str(TEMPLATE_PATH))
    assert not matches, f"template does not parse: {matches}"
    return template


TEMPLATE = load_template()
RESOURCES = TEMPLATE["Resources"]
GLOBAL_FN = TEMPLATE.get("Globals", {}).get("Function", {})


def plain(value):
    """cfn-lint's node types as plain dicts/lists/strings."""
    return json.loads(json.dumps(value))


def rust_source(rel):
    return (ROOT / rel).read_text()


def rust_str_array(src, name):
    """The string literals of `const NAME: [&str; N] = [...]`, checked against N."""
    m = re.search(
        r"const\s+" + name + r"\s*:\s*\[\s*&(?:'static\s+)?str\s*;\s*(\d+)\s*\]\s*=\s*\[(.*?)\]\s*;",
        src,
        re.S,
    )
    assert m, f"const {name} not found"
    values = re.findall(r'"([^"]*)"', m.group(2))
    assert len(values) == int(m.group(1)), f"{name}: {values} vs length {m.group(1)}"
    return values


def rust_str_const(src, name):
    m = re.search(r"const\s+" + name + r'\s*:\s*&(?:\'static\s+)?str\s*=\s*"([^"]*)"\s*;', src)
    assert m, f"const {name} not found"
    return m.group(1)


def rust_pairs_const(src, name):
    m = re.search(r"const\s+" + name + r"\s*:[^=]*=\s*\[(.*?)\]\s*;", src, re.S)
    assert m, f"const {name} not found"
    return re.findall(r'\(\s*"([^"]*)"\s*,\s*"([^"]*)"\s*\)', m.group(1))


def of_type(type_name):
    return {k: v for k, v in RESOURCES.items() if v["Type"] == type_name}


def ref(value):
    return value.get("Ref") if isinstance(value, dict) else None


def getatt(value):
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        att = value["Fn::GetAtt"]
        return tuple(att.split(".", 1)) if isinstance(att, str) else tuple(att)
    return None


def fn_prop(fn, key):
    """A function property, falling back to Globals."""
    return fn["Properties"].get(key, GLOBAL_FN.get(key))


FUNCTIONS = of_type("AWS::Serverless::Function")


def crates():
    """{binary name: crate dir} for every directory under functions/ holding a Cargo.toml."""
    out = {}
    for cargo in sorted((ROOT / "functions").glob("*/Cargo.toml")):
        manifest = tomlkit.parse(cargo.read_text())
        package = manifest["package"]["name"]
        bins = [b["name"] for b in manifest.get("bin", [])] or [package]
        assert package in bins, f"{cargo}: package {package} has no binary of its name ({bins})"
        assert cargo.parent.name == package, f"{cargo}: directory name differs from package {package}"
        out[package] = cargo.parent
    return out


def binary_of(fn):
    return fn.get("Metadata", {}).get("BuildProperties", {}).get("Binary")


def function_for(binary):
    found = [name for name, fn in FUNCTIONS.items() if binary_of(fn) == binary]
    assert len(found) == 1, f"binary {binary}: template functions {found}"
    return found[0]


# ---------------------------------------------------------------------------------------------
# Functions and crates
# ---------------------------------------------------------------------------------------------


def test_every_crate_is_a_function_and_back():
    by_crate = crates()
    assert by_crate, "no crates under functions/"
    binaries = {}
    for name, fn in FUNCTIONS.items():
        binary = binary_of(fn)
        assert binary, f"{name}: no Metadata.BuildProperties.Binary"
        assert binary not in binaries, f"{name} and {binaries.get(binary)} build the same binary"
        binaries[binary] = name
    missing = sorted(set(by_crate) - set(binaries))
    extra = sorted(set(binaries) - set(by_crate))
    assert not missing, f"crates without a template function: {missing}"
    assert not extra, f"template functions without a crate under functions/: {extra}"


def test_functions_build_with_cargo_lambda():
    workspace = tomlkit.parse((ROOT / "Cargo.toml").read_text())
    members = set(workspace["workspace"]["members"])
    by_crate = crates()
    for name, fn in FUNCTIONS.items():
        meta = fn.get("Metadata", {})
        assert meta.get("BuildMethod") == "rust-cargolambda", f"{name}: BuildMethod {meta.get('BuildMethod')}"
        assert fn_prop(fn, "Runtime") == "provided.al2023", f"{name}: Runtime {fn_prop(fn, 'Runtime')}"
        assert fn_prop(fn, "Handler") == "bootstrap", f"{name}: Handler {fn_prop(fn, 'Handler')}"
        assert fn_prop(fn, "Architectures") == ["arm64"], f"{name}: Architectures"
        code_uri = fn_prop(fn, "CodeUri")
        assert isinstance(code_uri, str), f"{name}: CodeUri {code_uri!r}"
        source = (INFRA / code_uri).resolve()
        crate_dir = by_crate[binary_of(fn)]
        # CodeUri is the crate or the workspace root it is a member of.
        if source == crate_dir.resolve():
            continue
        assert source == ROOT, f"{name}: CodeUri {code_uri} is {source}, not the workspace root"
        member = crate_dir.relative_to(ROOT).as_posix()
        assert member in members, f"{name}: {member} is not a workspace member"


# Variables only some functions read, beside config.rs's: {binary: (source, const)}.
OWN_ENV_VARS = {"archiver": ("shared/lambda/src/archiver.rs", "ENV_VARS")}


def test_environment_is_what_the_code_reads():
    config = rust_source("shared/aws/src/config.rs")
    env_vars = rust_str_array(config, "ENV_VARS")
    globals_env = GLOBAL_FN.get("Environment", {}).get("Variables", {})
    for name, fn in FUNCTIONS.items():
        expected = set(env_vars) | {LOG_LEVEL_VAR}
        if binary_of(fn) in OWN_ENV_VARS:
            expected |= set(rust_str_array(rust_source(OWN_ENV_VARS[binary_of(fn)][0]), OWN_ENV_VARS[binary_of(fn)][1]))
        own = fn["Properties"].get("Environment", {}).get("Variables", {})
        keys = set(globals_env) | set(own)
        assert keys == expected, (
            f"{name}: environment {sorted(keys)}; the code reads {sorted(expected)} "
            f"(missing {sorted(expected - keys)}, unused {sorted(keys - expected)})"
        )
    # ENV_VARS is the whole truth: every CHRONICLE_* name config.rs reads is listed, and every
    # listed name is read (outside the tests module).
    code = config.split("#[cfg(test)]")[0]
    literals = set(re.findall(r'"(CHRONICLE_[A-Z0-9_]+)"', code))
    assert literals == set(env_vars), f"config.rs reads {sorted(literals)}, ENV_VARS lists {sorted(env_vars)}"
    for var in env_vars:
        assert code.count(f'"{var}"') >= 2, f"{var} is listed in ENV_VARS but never read in config.rs"
    # The same for each function's own variables.
    for binary, (path, const) in OWN_ENV_VARS.items():
        src = rust_source(path).split("#[cfg(test)]")[0]
        own = rust_str_array(src, const)
        literals = set(re.findall(r'"(CHRONICLE_[A-Z0-9_]+)"', src))
        assert literals == set(own), f"{path} reads {sorted(literals)}, {const} lists {sorted(own)}"
        for var in own:
            assert src.count(f'"{var}"') >= 2, f"{var} is listed in {const} but never read in {path}"
    # The archiver's settings come from their parameters.
    env = FUNCTIONS[function_for("archiver")]["Properties"]["Environment"]["Variables"]
    assert ref(env["CHRONICLE_ARCHIVE_AFTER"]) == "ArchiveAfter"
    assert ref(env["CHRONICLE_ARCHIVE_BELOW_SNAPSHOT"]) == "ArchiveBelowSnapshot"
    assert ref(env["CHRONICLE_EXPIRE_AFTER"]) == "ExpireAfter"


def test_environment_values_point_at_the_right_resources():
    env = dict(GLOBAL_FN.get("Environment", {}).get("Variables", {}))
    wanted = {
        "CHRONICLE_EVENTS_TABLE": ("EventsTable", "AWS::DynamoDB::Table"),
        "CHRONICLE_READ_TABLE": ("ReadTable", "AWS::DynamoDB::Table"),
        "CHRONICLE_SNAPSHOT_BUCKET": ("SnapshotBucket", "AWS::S3::Bucket"),
        "CHRONICLE_ARCHIVE_BUCKET": ("ArchiveBucket", "AWS::S3::Bucket"),
        "CHRONICLE_EVENT_STREAM": ("EventStream", "AWS::Kinesis::Stream"),
        "CHRONICLE_ANCHOR_BUCKET": ("AnchorBucket", "AWS::S3::Bucket"),
        "CHRONICLE_KEY_TABLE": ("KeyTable", "AWS::DynamoDB::Table"),
    }
    for var, (resource, type_name) in wanted.items():
        assert ref(env.get(var)) == resource, f"{var} = {env.get(var)}, not Ref {resource}"
        assert RESOURCES[resource]["Type"] == type_name
    assert ref(env.get("CHRONICLE_SNAPSHOT_EVERY")) == "SnapshotEvery"
    assert ref(env.get("CHRONICLE_IDEMPOTENCY_RETENTION")) == "IdempotencyRetention"
    assert ref(env.get(LOG_LEVEL_VAR)) == "LogLevel"
    # The KMS key only when one is given: the code refuses CHRONICLE_KEY_KMS_KEY set but empty.
    kms = plain(env.get("CHRONICLE_KEY_KMS_KEY"))
    assert kms == {"Fn::If": ["HasKeyKmsKey", {"Ref": "KeyKmsKeyArn"}, {"Ref": "AWS::NoValue"}]}, kms
    assert plain(TEMPLATE["Conditions"]["HasKeyKmsKey"]) == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "KeyKmsKeyArn"}, ""]}]}


def test_log_level_variable_is_read_by_the_code():
    lib = rust_source("shared/lambda/src/lib.rs")
    # log_filter_from_env reads both by name.
    reads = set(re.findall(r'var\("(RUST_LOG|AWS_LAMBDA_LOG_LEVEL)"\)', lib))
    assert LOG_LEVEL_VAR in reads, f"the code reads {sorted(reads)}, the template sets {LOG_LEVEL_VAR}"
    levels = TEMPLATE["Parameters"]["LogLevel"]["AllowedValues"]
    assert set(levels) <= {"error", "warn", "info", "debug", "trace"}, levels


# ---------------------------------------------------------------------------------------------
# Data stores
# ---------------------------------------------------------------------------------------------


def key_schema(table):
    return {k["AttributeName"]: k["KeyType"] for k in table["Properties"]["KeySchema"]}


def attribute_types(table):
    return {a["AttributeName"]: a["AttributeType"] for a in table["Properties"]["AttributeDefinitions"]}


def test_events_table_matches_the_code():
    item = rust_source("shared/aws/src/item.rs")
    pk, sk = rust_str_const(item, "PK"), rust_str_const(item, "SK")
    index = rust_str_const(item, "TIME_INDEX")
    tb, ts = rust_str_const(item, "TIME_BUCKET"), rust_str_const(item, "TIME_KEY")
    t = RESOURCES["EventsTable"]
    p = t["Properties"]
    assert key_schema(t) == {pk: "HASH", sk: "RANGE"}, key_schema(t)
    assert attribute_types(t) == {pk: "S", sk: "N", tb: "S", ts: "S"}, attribute_types(t)
    (gsi,) = p["GlobalSecondaryIndexes"]
    assert gsi["IndexName"] == index, gsi["IndexName"]
    assert {k["AttributeName"]: k["KeyType"] for k in gsi["KeySchema"]} == {tb: "HASH", ts: "RANGE"}
    assert gsi["Projection"]["ProjectionType"] == "ALL"
    # The query role reads exactly that index (see EXPECTED_GRANTS).
    assert EVENTS_TIME_INDEX == "${EventsTable.Arn}/index/" + index
    assert p["BillingMode"] == "PAY_PER_REQUEST"
    assert p["StreamSpecification"]["StreamViewType"] == "NEW_IMAGE"
    assert p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert p["DeletionProtectionEnabled"] is True
    ttl = rust_str_const(item, "EXPIRES_AT")
    assert p["TimeToLiveSpecification"] == {"AttributeName": ttl, "Enabled": True}
    assert ARCHIVER_UPDATABLE == {pk, sk, ttl, rust_str_const(item, "HASH")}
    assert p["SSESpecification"]["SSEEnabled"] is True
    assert t.get("DeletionPolicy") == "Retain" and t.get("UpdateReplacePolicy") == "Retain"


def test_read_table_matches_the_code():
    src = rust_source("shared/aws/src/read_models.rs")
    pk = rust_str_const(src, "PK")
    indexes = rust_pairs_const(src, "INDEXES")
    assert indexes, "INDEXES not parsed"
    t = RESOURCES["ReadTable"]
    p = t["Properties"]
    assert key_schema(t) == {pk: "HASH"}, key_schema(t)
    expected_attrs = {pk: "S", "key": "S", **{attr: "S" for _, attr in indexes}}
    assert attribute_types(t) == expected_attrs, attribute_types(t)
    gsis = {g["IndexName"]: g for g in p["GlobalSecondaryIndexes"]}
    assert set(gsis) == {name for name, _ in indexes}, sorted(gsis)
    for name, attr in indexes:
        g = gsis[name]
        assert {k["AttributeName"]: k["KeyType"] for k in g["KeySchema"]} == {attr: "HASH", "key": "RANGE"}, name
        assert g["Projection"]["ProjectionType"] == "ALL", name
    assert p["BillingMode"] == "PAY_PER_REQUEST"
    assert p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is True
    assert p["DeletionProtectionEnabled"] is True
    assert p["SSESpecification"]["SSEEnabled"] is True


def test_key_table_keeps_no_copy_of_a_key():
    """Forgetting removes a key's item: no stream, no point-in-time recovery may keep it."""
    src = rust_source("shared/aws/src/keys.rs")
    t = RESOURCES["KeyTable"]
    p = t["Properties"]
    subject = rust_str_const(src, "SUBJECT")
    assert key_schema(t) == {subject: "HASH"}, key_schema(t)
    assert attribute_types(t) == {subject: "S"}, attribute_types(t)
    assert "StreamSpecification" not in p, "a stream would carry every key (and its removal) to readers"
    assert p["PointInTimeRecoverySpecification"]["PointInTimeRecoveryEnabled"] is False
    assert "GlobalSecondaryIndexes" not in p and "TimeToLiveSpecification" not in p
    assert p["BillingMode"] == "PAY_PER_REQUEST"
    assert p["DeletionProtectionEnabled"] is True
    assert p["SSESpecification"]["SSEEnabled"] is True
    assert t.get("DeletionPolicy") == "Retain" and t.get("UpdateReplacePolicy") == "Retain"
    # No event source reads it, no function but those that seal or reveal is granted it.
    for fn in FUNCTIONS.values():
        for e in fn["Properties"].get("Events", {}).values():
            assert "KeyTable" not in json.dumps(plain(e)), e
    # aws-setup creates it the same way.
    setup = rust_source("shared/aws/src/setup.rs")
    assert "fn ensure_key_table" in setup and "stream_specification" not in setup.split("fn ensure_key_table")[1].split("\nasync fn ")[0]


def test_buckets_are_private_encrypted_versioned_tls_only():
    policies = {ref(p["Properties"]["Bucket"]): p for p in of_type("AWS::S3::BucketPolicy").values()}
    for name in ("SnapshotBucket", "ArchiveBucket"):
        p = RESOURCES[name]["Properties"]
        assert all(p["PublicAccessBlockConfiguration"].get(k) is True for k in (
            "BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets")), name
        sse = p["BucketEncryption"]["ServerSideEncryptionConfiguration"][0]["ServerSideEncryptionByDefault"]
        assert sse["SSEAlgorithm"] in ("AES256", "aws:kms"), name
        assert p["VersioningConfiguration"]["Status"] == "Enabled", name
        rules = p["LifecycleConfiguration"]["Rules"]
        assert any("NoncurrentVersionExpiration" in r for r in rules), f"{name}: noncurrent versions never expire"
        assert name in policies, f"{name}: no bucket policy"
        deny = [
            s for s in policies[name]["Properties"]["PolicyDocument"]["Statement"]
            if s["Effect"] == "Deny" and s.get("Condition", {}).get("Bool", {}).get("aws:SecureTransport") == "false"
        ]
        assert deny, f"{name}: no TLS-only statement"
        assert RESOURCES[name].get("DeletionPolicy") == "Retain", name
    archive = RESOURCES["ArchiveBucket"]["Properties"]
    transitions = [t for r in archive["LifecycleConfiguration"]["Rules"] for t in r.get("Transitions", [])]
    assert any(t["StorageClass"] in ("STANDARD_IA", "GLACIER", "GLACIER_IR") for t in transitions)
    lock = archive["ObjectLockConfiguration"]
    assert list(lock) == ["Fn::If"] and lock["Fn::If"][0] == "ArchiveLocked", "Object Lock is not conditional"
    assert lock["Fn::If"][1]["Rule"]["DefaultRetention"] == {
        "Mode": {"Ref": "ArchiveObjectLockMode"}, "Days": {"Ref": "ArchiveObjectLockDays"}}
    assert archive["ObjectLockEnabled"] == {"Fn::If": ["ArchiveLocked", True, {"Ref": "AWS::NoValue"}]}
    # 0 days: no Object Lock.
    assert TEMPLATE["Conditions"]["ArchiveLocked"] == {
        "Fn::Not": [{"Fn::Equals": [{"Ref": "ArchiveObjectLockDays"}, "0"]}]}


def test_the_anchor_bucket_is_always_locked():
    p = RESOURCES["AnchorBucket"]["Properties"]
    assert p["ObjectLockEnabled"] is True
    rule = p["ObjectLockConfiguration"]["Rule"]["DefaultRetention"]
    assert rule == {"Mode": {"Ref": "AnchorLockMode"}, "Days": {"Ref": "AnchorRetentionDays"}}, rule
    assert set(TEMPLATE["Parameters"]["AnchorLockMode"]["AllowedValues"]) == {"GOVERNANCE", "COMPLIANCE"}
    assert p["VersioningConfiguration"]["Status"] == "Enabled"
    assert all(p["PublicAccessBlockConfiguration"].get(k) is True for k in (
        "BlockPublicAcls", "BlockPublicPolicy", "IgnorePublicAcls", "RestrictPublicBuckets"))
    assert RESOURCES["AnchorBucket"].get("DeletionPolicy") == "Retain"
    policies = {ref(x["Properties"]["Bucket"]): x for x in of_type("AWS::S3::BucketPolicy").values()}
    assert "AnchorBucket" in policies, "no TLS-only policy"
    # The anchorer runs on its parameter's schedule, and may not delete or re-lock anchors.
    fn = FUNCTIONS[function_for("anchorer")]["Properties"]
    (event,) = fn["Events"].values()
    assert event["Type"] == "Schedule"
    assert event["Properties"]["Schedule"] == {"Fn::Sub": "rate(${AnchorEveryMinutes} minutes)"}
    assert fn["EventInvokeConfig"]["MaximumRetryAttempts"] == 0
    deletes = {"s3:DeleteObject", "s3:DeleteObjectVersion", "s3:PutObjectRetention",
               "s3:BypassGovernanceRetention", "s3:PutObjectLegalHold"}
    assert not {a for a, _ in EXPECTED_GRANTS["anchorer"]} & deletes
    # The code writes each anchor once, in the bucket this variable names.
    code = rust_source("shared/aws/src/anchors.rs")
    assert 'if_none_match("*")' in code


def test_kinesis_stream():
    p = RESOURCES["EventStream"]["Properties"]
    assert p["StreamModeDetails"]["StreamMode"] == "ON_DEMAND"
    assert "ShardCount" not in p
    assert p["StreamEncryption"] == {"EncryptionType": "KMS", "KeyId": "alias/aws/kinesis"}
    assert ref(p["RetentionPeriodHours"]) == "KinesisRetentionHours"


# ---------------------------------------------------------------------------------------------
# Event source mappings and their on-failure queues
# ---------------------------------------------------------------------------------------------

STREAM_CONSUMERS = {
    # binary: (event type, source)
    "projector": ("DynamoDB", ("EventsTable", "StreamArn")),
    "publisher": ("DynamoDB", ("EventsTable", "StreamArn")),
    "snapshotter": ("Kinesis", ("EventStream", "Arn")),
    "activity": ("Kinesis", ("EventStream", "Arn")),
    "reactor": ("Kinesis", ("EventStream", "Arn")),
}


def failure_queue(binary):
    events = FUNCTIONS[function_for(binary)]["Properties"]["Events"]
    (event,) = [e for e in events.values() if e["Type"] in ("DynamoDB", "Kinesis")]
    return getatt(event["Properties"]["DestinationConfig"]["OnFailure"]["Destination"])[0]


def test_the_table_stream_has_at_most_two_readers():
    # AWS: "No more than two processes at most should be reading from the same streams shard at
    # the same time"; more are throttled. Everything else reads the Kinesis stream.
    readers = [
        name
        for name, fn in FUNCTIONS.items()
        for e in fn["Properties"].get("Events", {}).values()
        if e["Type"] == "DynamoDB" and getatt(e["Properties"]["Stream"]) == ("EventsTable", "StreamArn")
    ]
    assert len(readers) <= 2, f"the events table's stream has {len(readers)} readers: {readers}"
    assert sorted(binary_of(FUNCTIONS[n]) for n in readers) == ["projector", "publisher"], readers


def test_event_source_mappings():
    queues = set()
    for binary, (event_type, source) in STREAM_CONSUMERS.items():
        name = function_for(binary)
        events = FUNCTIONS[name]["Properties"].get("Events", {})
        streams = [e for e in events.values() if e["Type"] in ("DynamoDB", "Kinesis", "SQS")]
        assert len(streams) == 1, f"{name}: {len(streams)} stream events"
        e = streams[0]
        p = e["Properties"]
        assert e["Type"] == event_type, f"{name}: {e['Type']}"
        assert getatt(p["Stream"]) == source, f"{name}: Stream {p['Stream']}"
        assert p["StartingPosition"] == "TRIM_HORIZON", name
        assert 1 <= p["BatchSize"] <= 10000, name
        assert p["FunctionResponseTypes"] == ["ReportBatchItemFailures"], name
        assert p["BisectBatchOnFunctionError"] is True, name
        assert 0 <= p["MaximumRetryAttempts"] <= 100, f"{name}: retries unbounded"
        assert 60 <= p["MaximumRecordAgeInSeconds"] <= 604800, name
        assert p.get("ParallelizationFactor", 1) == 1, f"{name}: parallel batches break per-aggregate order"
        queue = failure_queue(binary)
        assert RESOURCES[queue]["Type"] == "AWS::SQS::Queue", f"{name}: OnFailure {queue}"
        assert queue not in queues, f"{name}: on-failure queue {queue} shared"
        queues.add(queue)
        q = RESOURCES[queue]["Properties"]
        assert q["MessageRetentionPeriod"] == 1209600, queue
        assert q.get("SqsManagedSseEnabled") is True or "KmsMasterKeyId" in q, f"{queue}: not encrypted"
    for name in ("command", "query"):
        events = FUNCTIONS[function_for(name)]["Properties"]["Events"]
        assert all(e["Type"] == "HttpApi" for e in events.values()), name


# ---------------------------------------------------------------------------------------------
# Least privilege
# ---------------------------------------------------------------------------------------------

# Actions with no resource-level permissions: the only ones allowed on "*".
STAR_OK = {"xray:PutTraceSegments", "xray:PutTelemetryRecords", "dynamodb:ListStreams", "kinesis:ListStreams"}

EVENTS = "EventsTable.Arn"
EVENTS_STREAM = "EventsTable.StreamArn"
READ = "ReadTable.Arn"
READ_INDEXES = "${ReadTable.Arn}/index/*"
EVENTS_TIME_INDEX = "${EventsTable.Arn}/index/by_time"
SNAPSHOT_OBJECTS = "${SnapshotBucket.Arn}/snapshots/*"
SNAPSHOT_BUCKET = "SnapshotBucket.Arn"
ARCHIVE_OBJECTS = "${ArchiveBucket.Arn}/*"
ARCHIVE_BUCKET = "ArchiveBucket.Arn"
# The attributes the archiver's UpdateItem may name: the keys, expires_at, and the hash its
# condition compares (checked against item.rs in test_events_table_matches_the_code).
ARCHIVER_UPDATABLE = {"stream", "version", "expires_at", "hash"}
STREAM = "EventStream.Arn"
KEYS = "KeyTable.Arn"
# A subject's key: read or created once (sealing), read in batches (revealing answers).
KEYS_WRITE = (["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:BatchGetItem"], [KEYS])
# With KeyKmsKeyArn: the statements under Fn::If HasKeyKmsKey (see role_grants).
KMS_WRAP = (["kms:Encrypt", "kms:Decrypt"], ["KeyKmsKeyArn"])
STREAM_READ = {("dynamodb:DescribeStream", EVENTS_STREAM), ("dynamodb:GetRecords", EVENTS_STREAM),
               ("dynamodb:GetShardIterator", EVENTS_STREAM), ("dynamodb:ListStreams", "*")}


def grants(*pairs):
    out = set()
    for actions, resources in pairs:
        for a in actions:
            for r in resources:
                out.add((a, r))
    return out


EXPECTED_GRANTS = {
    # Both read archived events whose hot copies expired (ArchivedEventStore in App::new).
    "command": grants(
        (["dynamodb:PutItem", "dynamodb:ConditionCheckItem", "dynamodb:GetItem", "dynamodb:Query"], [EVENTS]),
        (["s3:GetObject"], [SNAPSHOT_OBJECTS, ARCHIVE_OBJECTS]),
        (["s3:ListBucket"], [SNAPSHOT_BUCKET, ARCHIVE_BUCKET]),
        KEYS_WRITE,
        KMS_WRAP,
    ),
    "query": grants(
        (["dynamodb:GetItem", "dynamodb:Query"], [EVENTS, READ, READ_INDEXES]),
        (["dynamodb:Query"], [EVENTS_TIME_INDEX]),
        (["s3:GetObject"], [SNAPSHOT_OBJECTS, ARCHIVE_OBJECTS]),
        (["s3:ListBucket"], [SNAPSHOT_BUCKET, ARCHIVE_BUCKET]),
        (["dynamodb:BatchGetItem"], [KEYS]),
        (["kms:Decrypt"], ["KeyKmsKeyArn"]),
    ),
    "projector": grants(
        (["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:Query"], [READ, READ_INDEXES]),
        (["dynamodb:Query", "dynamodb:GetItem"], [EVENTS]),
        (["sqs:SendMessage"], ["ProjectorFailureQueue.Arn"]),
    ) | STREAM_READ,
    "publisher": grants(
        (["kinesis:PutRecords", "kinesis:PutRecord"], [STREAM]),
        (["sqs:SendMessage"], ["PublisherFailureQueue.Arn"]),
    ) | STREAM_READ,
    "snapshotter": grants(
        (["dynamodb:Query", "dynamodb:GetItem"], [EVENTS]),
        (["s3:GetObject", "s3:PutObject"], [SNAPSHOT_OBJECTS]),
        (["s3:ListBucket"], [SNAPSHOT_BUCKET]),
        (["kinesis:GetRecords", "kinesis:GetShardIterator", "kinesis:DescribeStream",
          "kinesis:DescribeStreamSummary", "kinesis:ListShards"], [STREAM]),
        (["kinesis:ListStreams"], ["*"]),
        (["sqs:SendMessage"], ["SnapshotterFailureQueue.Arn"]),
    ),
    "activity": grants(
        (["dynamodb:GetItem", "dynamodb:PutItem"], [READ]),
        (["kinesis:GetRecords", "kinesis:GetShardIterator", "kinesis:DescribeStream",
          "kinesis:DescribeStreamSummary", "kinesis:ListShards"], [STREAM]),
        (["kinesis:ListStreams"], ["*"]),
        (["sqs:SendMessage"], ["ActivityFailureQueue.Arn"]),
    ),
    # The reactions' commands run in-process, as the command function runs them.
    "reactor": grants(
        (["dynamodb:GetItem", "dynamodb:PutItem"], [READ]),
        (["dynamodb:PutItem", "dynamodb:ConditionCheckItem", "dynamodb:GetItem", "dynamodb:Query"], [EVENTS]),
        (["s3:GetObject"], [SNAPSHOT_OBJECTS, ARCHIVE_OBJECTS]),
        (["s3:ListBucket"], [SNAPSHOT_BUCKET, ARCHIVE_BUCKET]),
        (["kinesis:GetRecords", "kinesis:GetShardIterator", "kinesis:DescribeStream",
          "kinesis:DescribeStreamSummary", "kinesis:ListShards"], [STREAM]),
        (["kinesis:ListStreams"], ["*"]),
        (["sqs:SendMessage"], ["ReactorFailureQueue.Arn"]),
        KEYS_WRITE,
        KMS_WRAP,
    ),
    "anchorer": grants(
        (["dynamodb:Scan"], [EVENTS]),
        (["s3:GetObject", "s3:PutObject"], ["${AnchorBucket.Arn}/*"]),
        (["s3:ListBucket"], ["AnchorBucket.Arn"]),
        (["kinesis:PutRecord"], [STREAM]),
    ),
    "archiver": grants(
        (["dynamodb:Scan", "dynamodb:Query", "dynamodb:UpdateItem"], [EVENTS]),
        (["s3:GetObject"], [SNAPSHOT_OBJECTS]),
        (["s3:ListBucket"], [SNAPSHOT_BUCKET, ARCHIVE_BUCKET]),
        (["s3:GetObject", "s3:PutObject"], [ARCHIVE_OBJECTS]),
    ),
}
# Every role also writes its own log group and X-Ray segments.
COMMON = {"logs:CreateLogStream", "logs:PutLogEvents", "xray:PutTraceSegments", "xray:PutTelemetryRecords"}


def resource_key(r):
    """A statement resource as a comparable string: '*', 'Res.Att' or the Fn::Sub text."""
    if r == "*":
        return r
    att = getatt(r)
    if att:
        return ".".join(att)
    if isinstance(r, dict) and "Fn::Sub" in r and isinstance(r["Fn::Sub"], str):
        return r["Fn::Sub"]
    if ref(r) == "KeyKmsKeyArn":
        return "KeyKmsKeyArn"
    raise AssertionError(f"unexpected resource form {r!r} (hard-coded ARN?)")


def role_grants(role_name):
    role = RESOURCES[role_name]
    assert role["Type"] == "AWS::IAM::Role", role_name
    assert not role["Properties"].get("ManagedPolicyArns"), f"{role_name}: managed policies"
    trust = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
    assert [s["Principal"] for s in trust] == [{"Service": "lambda.amazonaws.com"}], role_name
    out = set()
    for policy in role["Properties"]["Policies"]:
        for s in policy["PolicyDocument"]["Statement"]:
            if "Fn::If" in s:
                # Only the KMS grants are conditional, on a KMS key given; without one the
                # statement is not there.
                cond, s, otherwise = s["Fn::If"]
                assert cond == "HasKeyKmsKey" and ref(otherwise) == "AWS::NoValue", (role_name, cond)
                assert all(a.startswith("kms:") for a in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]]))
                # Bound to the subject context the code sets (KMS_CONTEXT in keys.rs).
                context = rust_str_const(rust_source("shared/aws/src/keys.rs"), "KMS_CONTEXT")
                assert plain(s["Condition"]) == {
                    "ForAllValues:StringEquals": {"kms:EncryptionContextKeys": [context]},
                    "Null": {"kms:EncryptionContextKeys": "false"},
                }, (role_name, s["Condition"])
            assert s["Effect"] == "Allow", f"{role_name}: {s}"
            assert "NotAction" not in s and "NotResource" not in s, role_name
            actions = s["Action"] if isinstance(s["Action"], list) else [s["Action"]]
            resources = s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]
            for a in actions:
                assert "*" not in a, f"{role_name}: wildcard action {a}"
                for r in resources:
                    out.add((a, resource_key(r)))
    return out


def test_least_privilege():
    for binary, expected in EXPECTED_GRANTS.items():
        fn_name = function_for(binary)
        fn = FUNCTIONS[fn_name]["Properties"]
        role_name = getatt(fn.get("Role"))[0] if getatt(fn.get("Role")) else None
        assert role_name, f"{fn_name}: no explicit Role (SAM would attach managed policies on '*')"
        assert "Policies" not in fn, f"{fn_name}: Policies are ignored with an explicit Role"
        got = role_grants(role_name)
        for action, resource in got:
            if resource == "*":
                assert action in STAR_OK, f"{role_name}: {action} on '*'"
        log_group = ref(fn["LoggingConfig"]["LogGroup"])
        common = {(a, f"{log_group}.Arn") for a in COMMON if a.startswith("logs:")} | {
            (a, "*") for a in COMMON if a.startswith("xray:")}
        app = got - common
        assert common <= got, f"{role_name}: missing {sorted(common - got)}"
        assert app == expected, (
            f"{role_name}:\n  extra   {sorted(app - expected)}\n  missing {sorted(expected - app)}"
        )
    # Explicitly: commands never update or delete events, queries never write.
    forbidden = {"dynamodb:UpdateItem", "dynamodb:DeleteItem", "dynamodb:BatchWriteItem"}
    assert not {a for a, _ in EXPECTED_GRANTS["command"]} & forbidden
    assert all(a.split(":")[1].startswith(("Get", "BatchGet", "Query", "List", "Decrypt"))
               for a, _ in EXPECTED_GRANTS["query"])
    # Only the operator forgets (chronicle forget --backend aws): no function can destroy a key.
    for binary, expected in EXPECTED_GRANTS.items():
        assert not {a for a, r in expected if r == KEYS} & {"dynamodb:UpdateItem", "dynamodb:DeleteItem"}, binary
    # The archiver deletes nothing: hot copies expire through TTL, segments stay.
    deletes = {"dynamodb:DeleteItem", "dynamodb:BatchWriteItem", "dynamodb:PutItem", "s3:DeleteObject",
               "s3:DeleteObjectVersion", "s3:PutObjectRetention", "s3:BypassGovernanceRetention"}
    assert not {a for a, _ in EXPECTED_GRANTS["archiver"]} & deletes, "the archiver may delete or overwrite"


def test_archiver_updates_only_expires_at():
    role = getatt(FUNCTIONS[function_for("archiver")]["Properties"]["Role"])[0]
    updates = [
        s for p in RESOURCES[role]["Properties"]["Policies"] for s in p["PolicyDocument"]["Statement"]
        if "dynamodb:UpdateItem" in (s["Action"] if isinstance(s["Action"], list) else [s["Action"]])
    ]
    assert len(updates) == 1, updates
    (u,) = updates
    assert u["Action"] == "dynamodb:UpdateItem", "UpdateItem shares a statement with other actions"
    cond = u["Condition"]
    assert set(cond["ForAllValues:StringEquals"]["dynamodb:Attributes"]) == ARCHIVER_UPDATABLE, cond
    assert set(cond["StringEqualsIfExists"]["dynamodb:ReturnValues"]) <= {"NONE", "UPDATED_NEW"}, cond
    # The code sets exactly that attribute, under that condition.
    events = rust_source("shared/aws/src/events.rs")
    assert '"SET #exp = :at"' in events and "attribute_exists(#pk) AND #h = :hash" in events


def test_archiver_runs_daily_with_room():
    fn = FUNCTIONS[function_for("archiver")]["Properties"]
    (event,) = fn["Events"].values()
    assert event["Type"] == "Schedule", event
    assert event["Properties"]["Schedule"] in ("rate(1 day)",) or event["Properties"]["Schedule"].startswith("cron("), event
    assert fn["Timeout"] == 900, fn["Timeout"]
    assert fn["MemorySize"] >= 1024, fn["MemorySize"]
    assert fn["EventInvokeConfig"]["MaximumRetryAttempts"] == 0
    # The sample payload the smoke test invokes it with is such an event.
    sample = json.loads((ROOT / "events/eventbridge/schedule.json").read_text())
    assert sample["source"] == "aws.events" and sample["detail-type"] == "Scheduled Event"


# ---------------------------------------------------------------------------------------------
# HTTP API and its authorisation, through the SAM transform
# ---------------------------------------------------------------------------------------------

ROUTES = {
    ("POST", "/{aggregate_type}/{id}/commands"): "command",
    ("GET", "/{aggregate_type}"): "query",
    ("GET", "/{aggregate_type}/{id}"): "query",
    ("GET", "/{aggregate_type}/{id}/events"): "query",
    ("GET", "/audit/events"): "query",
    ("GET", "/health"): "query",
    ("GET", "/openapi.json"): "query",
}
PUBLIC = {("GET", "/health")}


def test_routes_match_the_router():
    got = {}
    for name, fn in FUNCTIONS.items():
        for e in fn["Properties"].get("Events", {}).values():
            if e["Type"] == "HttpApi":
                p = e["Properties"]
                assert ref(p["ApiId"]) == "HttpApi", name
                assert p.get("PayloadFormatVersion", "2.0") == "2.0", name
                got[(p["Method"].upper(), p["Path"])] = binary_of(fn)
    assert got == ROUTES, got
    # The router in shared/http serves exactly these paths.
    router = rust_source("shared/http/src/lib.rs") if (ROOT / "shared/http/src/lib.rs").exists() else ""
    for _, path in ROUTES:
        assert f'"{path}"' in router, f"{path} is not a route of shared/http"


def resolve(value, conditions):
    """Fn::If and AWS::NoValue resolved for the given condition values."""
    if isinstance(value, dict):
        if set(value) == {"Fn::If"}:
            cond, yes, no = value["Fn::If"]
            return resolve(yes if conditions[cond] else no, conditions)
        out = {}
        for k, v in value.items():
            r = resolve(v, conditions)
            if r != {"Ref": "AWS::NoValue"}:
                out[k] = r
        return out
    if isinstance(value, list):
        return [resolve(v, conditions) for v in value]
    return value


def transformed(parameters):
    from samtranslator.translator.transform import transform

    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    # The translator warns about metrics nobody publishes offline.
    logging.getLogger("samtranslator.metrics.metrics").setLevel(logging.ERROR)
    t = copy.deepcopy(plain(TEMPLATE))
    for fn in t["Resources"].values():
        if fn["Type"] == "AWS::Serverless::Function":
            fn["Properties"]["CodeUri"] = "s3://bucket/key"  # what `sam package` puts there

    class NoManagedPolicies:
        def load(self):
            return {}

    return transform(t, parameters, NoManagedPolicies())


def test_auth_modes_after_the_sam_transform():
    for mode, params in {
        "jwt": {"AuthMode": "jwt", "JwtIssuer": "https://issuer.example.com/", "JwtAudience": "client"},
        "iam": {"AuthMode": "iam"},
    }.items():
        out = transformed(params)
        resources = out["Resources"]
        # SAM attached no managed policy and created no role of its own.
        assert not [k for k, v in resources.items() if v["Type"] == "AWS::IAM::Role" and k not in RESOURCES]
        apis = [v for v in resources.values() if v["Type"] == "AWS::ApiGatewayV2::Api"]
        assert len(apis) == 1, len(apis)
        body = resolve(apis[0]["Properties"]["Body"], {"IsJwt": mode == "jwt"})
        schemes = body["components"]["securitySchemes"]
        routes = set()
        for path, item in body["paths"].items():
            for method, op in item.items():
                if "x-amazon-apigateway-integration" not in op:
                    continue
                routes.add((method.upper(), path))
                security = op.get("security", [])
                if (method.upper(), path) in PUBLIC:
                    assert not security or security == [{"NONE": []}], f"{path}: {security}"
                elif mode == "jwt":
                    assert security == [{"JwtAuth": []}], f"{mode} {method} {path}: {security}"
                else:
                    assert security == [{"AWS_IAM": []}], f"{mode} {method} {path}: {security}"
        assert routes == set(ROUTES), routes
        if mode == "jwt":
            assert list(schemes) == ["JwtAuth"], schemes
            auth = schemes["JwtAuth"]["x-amazon-apigateway-authorizer"]
            assert auth["type"] == "jwt"
            assert auth["jwtConfiguration"] == {"issuer": {"Ref": "JwtIssuer"}, "audience": [{"Ref": "JwtAudience"}]}
        else:
            assert list(schemes) == ["AWS_IAM"], schemes
            assert schemes["AWS_IAM"]["x-amazon-apigateway-authtype"] == "awsSigv4"
        stages = [v for v in resources.values() if v["Type"] == "AWS::ApiGatewayV2::Stage"]
        assert len(stages) == 1
        stage = stages[0]["Properties"]
        assert stage["StageName"] == "$default", "a named stage prefixes every path the router sees"
        fmt = json.loads(stage["AccessLogSettings"]["Format"])
        for field in ("requestId", "ip", "routeKey", "status", "latency"):
            assert field in fmt, f"access log lacks {field}"
        assert getatt(stage["AccessLogSettings"]["DestinationArn"]) == ("ApiAccessLogGroup", "Arn")
        throttle = stage["DefaultRouteSettings"]
        assert "ThrottlingBurstLimit" in throttle and "ThrottlingRateLimit" in throttle
        mappings = [v for v in resources.values() if v["Type"] == "AWS::Lambda::EventSourceMapping"]
        assert len(mappings) == len(STREAM_CONSUMERS), len(mappings)


# ---------------------------------------------------------------------------------------------
# Alarms, outputs, parameters, skips, samconfig
# ---------------------------------------------------------------------------------------------


def test_alarms():
    alarms = [a["Properties"] for a in of_type("AWS::CloudWatch::Alarm").values()]

    def has(namespace, metric, dim_name, dim_value):
        return any(
            a["Namespace"] == namespace and a["MetricName"] == metric
            and any(d["Name"] == dim_name and d["Value"] == dim_value for d in a["Dimensions"])
            for a in alarms
        )

    for name in FUNCTIONS:
        for metric in ("Errors", "Throttles"):
            assert has("AWS/Lambda", metric, "FunctionName", {"Ref": name}), f"{name}: no {metric} alarm"
    for binary in STREAM_CONSUMERS:
        name = function_for(binary)
        assert has("AWS/Lambda", "IteratorAge", "FunctionName", {"Ref": name}), f"{name}: no IteratorAge alarm"
        q = failure_queue(binary)
        assert has("AWS/SQS", "ApproximateNumberOfMessagesVisible", "QueueName",
                   {"Fn::GetAtt": [q, "QueueName"]}), f"{q}: no depth alarm"
    for a in alarms:
        if a["MetricName"] == "IteratorAge":
            assert a["Statistic"] == "Maximum"


def test_outputs():
    outputs = TEMPLATE["Outputs"]
    values = {json.dumps(plain(o["Value"]), sort_keys=True) for o in outputs.values()}
    for resource in ("EventsTable", "ReadTable", "SnapshotBucket", "ArchiveBucket", "EventStream", "AnchorBucket",
                     "KeyTable"):
        assert json.dumps({"Ref": resource}) in values, f"no output for {resource}"
    for binary in STREAM_CONSUMERS:
        assert json.dumps({"Ref": failure_queue(binary)}) in values, f"no output for {binary}'s queue"
    assert any("execute-api" in v and "HttpApi" in v for v in values), "no API URL output"


def test_parameters():
    params = TEMPLATE["Parameters"]
    for p in ("Stage", "SnapshotEvery", "ArchiveHorizonDays", "LogLevel", "AuthMode", "JwtIssuer",
              "JwtAudience", "KinesisRetentionHours", "ArchiveObjectLockDays", "ArchiveObjectLockMode",
              "ArchiveAfter", "ArchiveBelowSnapshot", "ExpireAfter", "IdempotencyRetention",
              "AnchorEveryMinutes", "AnchorRetentionDays", "AnchorLockMode", "KeyKmsKeyArn"):
        assert p in params, f"parameter {p} missing"
    assert params["SnapshotEvery"]["Default"] == 100
    assert set(params["AuthMode"]["AllowedValues"]) == {"jwt", "iam"}
    assert params["ArchiveObjectLockDays"]["Default"] == 0 and params["ArchiveObjectLockDays"]["MinValue"] == 0
    assert set(params["ArchiveObjectLockMode"]["AllowedValues"]) == {"GOVERNANCE", "COMPLIANCE"}
    assert set(params["ArchiveBelowSnapshot"]["AllowedValues"]) == {"true", "false"}
    # Durations the code's parser (humantime) takes, and nothing it refuses.
    after, expire = params["ArchiveAfter"]["AllowedPattern"], params["ExpireAfter"]["AllowedPattern"]
    for ok in ("30d", "12h", "0s", "1w", "7d 12h"):
        assert re.fullmatch(after, ok) and re.fullmatch(expire, ok), ok
    assert re.fullmatch(expire, "off") and not re.fullmatch(after, "off")
    for bad in ("", "30", "a month", "-1d", "30 days"):
        assert not re.fullmatch(after, bad) and not re.fullmatch(expire, bad), bad
    assert re.fullmatch(after, str(params["ArchiveAfter"]["Default"]))
    assert re.fullmatch(expire, str(params["ExpireAfter"]["Default"]))
    # The idempotency retention: what config.rs's parse_retention takes, above zero.
    retention = params["IdempotencyRetention"]["AllowedPattern"]
    for ok in ("7d", "12h", "1s", "10s", "1w", "7d 12h", "0s 5m", "100d"):
        assert re.fullmatch(retention, ok), ok
    for bad in ("", "0s", "0d 0h", "00m", "30", "off", "-1d", "7 days"):
        assert not re.fullmatch(retention, bad), bad
    assert params["IdempotencyRetention"]["Default"] == "7d"
    # The default matches the kernel's (seconds).
    command = rust_source("shared/kernel/src/command.rs")
    assert "DEFAULT_IDEMPOTENCY_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600)" in command


def test_nothing_account_specific():
    text = TEMPLATE_PATH.read_text()
    assert not re.search(r"\b\d{12}\b", text), "an account id is hard-coded"
    assert not re.search(r"\b(us|eu|ap|sa|ca|me|af|il|mx)-[a-z]+-\d\b", text), "a region is hard-coded"
    assert not re.search(r"arn:aws[a-z-]*:", text), "an ARN is hard-coded (use ${AWS::Partition} etc.)"


def test_checkov_skips_have_reasons():
    for name, r in RESOURCES.items():
        for skip in r.get("Metadata", {}).get("checkov", {}).get("skip", []):
            assert re.fullmatch(r"CKV2?_AWS_\d+", skip["id"]), f"{name}: {skip}"
            assert len(skip.get("comment", "").strip()) > 20, f"{name}: {skip['id']} without a reason"


def test_samconfig():
    cfg = tomlkit.parse((ROOT / "samconfig.toml").read_text())
    default = cfg["default"]
    assert default["global"]["parameters"]["stack_name"] == "chronicle"
    deploy = default["deploy"]["parameters"]
    caps = str(deploy["capabilities"]).split()
    assert "CAPABILITY_IAM" in caps, caps
    assert set(caps) <= {"CAPABILITY_IAM", "CAPABILITY_AUTO_EXPAND"}, caps
    assert deploy["resolve_s3"] is True
    assert deploy["confirm_changeset"] is True
    assert "template_file" not in deploy, "deploy must use the built template"
    assert default["build"]["parameters"]["template_file"] == "infra/template.yaml"
    for section in default.values():
        assert "region" not in section.get("parameters", {}), "region is hard-coded in samconfig.toml"
    overrides = re.findall(r'(\w+)=', str(deploy["parameter_overrides"]))
    assert overrides, "no parameter_overrides example"
    for p in overrides:
        assert p in TEMPLATE["Parameters"], f"parameter_overrides names unknown parameter {p}"


def main():
    tests = [(n, f) for n, f in globals().items() if n.startswith("test_") and callable(f)]
    failed = 0
    for name, f in tests:
        try:
            f()
            print(f"ok   {name}")
        except AssertionError as e:
            failed += 1
            print(f"FAIL {name}: {e}")
    print(f"{len(tests) - failed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

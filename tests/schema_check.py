"""`mfglab schema` checked by an independent validator (Debian's python3-jsonschema).

The schema must be a valid draft 2020-12 schema; every experiment file in experiments/ must
pass it; a set of malformed files must fail it, and `mfglab validate` must reject those too.

  python3 schema_check.py MFGLAB_BINARY EXPERIMENTS_DIR
"""
import json, os, subprocess, sys, tempfile

import jsonschema

mfglab, experiments = sys.argv[1], sys.argv[2]
failures = []


def check(condition, message):
    if not condition:
        failures.append(message)


out = subprocess.run([mfglab, 'schema'], capture_output=True, text=True)
check(out.returncode == 0, 'mfglab schema exited with %d: %s' % (out.returncode, out.stderr))
schema = json.loads(out.stdout)
check(schema.get('$schema') == 'https://json-schema.org/draft/2020-12/schema', 'not a draft 2020-12 schema')
jsonschema.Draft202012Validator.check_schema(schema)
validator = jsonschema.Draft202012Validator(schema)

# Every shipped experiment passes.
names = sorted(f for f in os.listdir(experiments) if f.endswith('.json'))
check(len(names) >= 3, 'too few experiment files found in %s' % experiments)
for name in names:
    with open(os.path.join(experiments, name)) as f:
        doc = json.load(f)
    errors = [e.message for e in validator.iter_errors(doc)]
    check(not errors, '%s fails the schema: %s' % (name, errors[:3]))

# Malformed files fail the schema and `mfglab validate`.
good = {"name": "x", "dataset": {"plugin": "toy2d", "params": {"name": "8gaussians"}},
        "model": {"plugin": "sgm", "params": {"width": 16}},
        "train": {"iterations": 10}, "eval": {"metrics": [{"plugin": "mmd"}]}}
bad = {
    'no name': lambda d: d.pop('name'),
    'unknown top key': lambda d: d.update(trian={}),
    'unknown model plugin': lambda d: d['model'].update(plugin='no_such_model'),
    'a dataset plugin as model': lambda d: d['model'].update(plugin='toy2d'),
    'unknown parameter': lambda d: d['model']['params'].update(widht=16),
    'parameter below its bound': lambda d: d['model']['params'].update(width=0),
    'parameter of the wrong type': lambda d: d['model']['params'].update(width='wide'),
    'string outside its choices': lambda d: d['dataset']['params'].update(name='9gaussians'),
    'iterations not an integer': lambda d: d['train'].update(iterations=1.5),
    'unknown optimizer': lambda d: d['train'].update(optimizer={'type': 'adamw'}),
    'bad dtype': lambda d: d.update(dtype='float16'),
    'negative seed': lambda d: d.update(seeds=[-1]),
    'metric without plugin': lambda d: d['eval'].update(metrics=[{'params': {}}]),
    'bad memory limit': lambda d: d['train'].update(memory_limit='4Q'),
}
check(not list(validator.iter_errors(good)), 'the good file fails the schema: %s' % [e.message for e in validator.iter_errors(good)])
with tempfile.TemporaryDirectory() as tmp:
    def mfglab_validates(doc):
        path = os.path.join(tmp, 'exp.json')
        with open(path, 'w') as f:
            json.dump(doc, f)
        return subprocess.run([mfglab, 'validate', path], capture_output=True, text=True).returncode == 0
    check(mfglab_validates(good), 'mfglab validate rejects the good file')
    for what, change in bad.items():
        doc = json.loads(json.dumps(good))
        change(doc)
        check(not validator.is_valid(doc), 'the schema accepts a file with: %s' % what)
        check(not mfglab_validates(doc), 'mfglab validate accepts a file with: %s' % what)

for f in failures:
    print('FAILED:', f)
print('%d experiment files, %d malformed files checked; %d failures' % (len(names), len(bad), len(failures)))
sys.exit(1 if failures else 0)

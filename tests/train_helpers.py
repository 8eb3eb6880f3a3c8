"""Small real data for the training tests: slices of the shipped rsc15_100k sample."""
import functools
import os

from gru4rec_ext.data import ItemMap, SessionData, read_events

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RSC15_TRAIN = os.path.join(ROOT, "data", "rsc15_100k", "train.tsv.xz")
RSC15_TEST = os.path.join(ROOT, "data", "rsc15_100k", "test.tsv.xz")
DIGINETICA_SAMPLE = os.path.join(ROOT, "data", "diginetica_sample", "train-item-views.csv.xz")


@functools.lru_cache(maxsize=1)
def rsc15_events():
    return read_events(RSC15_TRAIN)


def rsc15_frames(n_train_sessions=1500, n_test_sessions=300):
    """(train events, test events): the first sessions of the file, then the next ones."""
    df = rsc15_events()
    sessions = df["SessionId"].unique()
    tr = df[df["SessionId"].isin(sessions[:n_train_sessions])]
    te = df[df["SessionId"].isin(sessions[n_train_sessions:n_train_sessions + n_test_sessions])]
    return tr.reset_index(drop=True), te.reset_index(drop=True)


def rsc15_slice(n_train_sessions=1500, n_test_sessions=300):
    """(train SessionData, test SessionData with unknown items dropped, item_map)."""
    tr, te = rsc15_frames(n_train_sessions, n_test_sessions)
    item_map = ItemMap.fit(tr["ItemId"])
    train = SessionData.from_events(tr, item_map, name="rsc15 slice train")
    test = SessionData.from_events(te, item_map, drop_unknown=True, name="rsc15 slice test")
    return train, test, item_map


def write_tsv(df, path):
    df.to_csv(path, sep="\t", index=False)
    return str(path)

"""A local folder as a manifest."""
import hashlib

from emr_job.folders import manifest_for_folder


def test_folder_manifest_keys_labels_and_md5_etags(tmp_path):
    (tmp_path / "Apple Red" / "sub").mkdir(parents=True)
    (tmp_path / "Apple Red" / "1.jpg").write_bytes(b"one")
    (tmp_path / "Kiwi").mkdir()
    (tmp_path / "Kiwi" / "2.JPG").write_bytes(b"two")
    (tmp_path / "Kiwi" / "notes.txt").write_text("not an image")
    manifest = manifest_for_folder(str(tmp_path))
    assert [(item.key, item.etag) for item in manifest.items] == [
        ("Apple Red/1.jpg", hashlib.md5(b"one").hexdigest()),
        ("Kiwi/2.JPG", hashlib.md5(b"two").hexdigest()),
    ]
    assert manifest.source == f"file://{tmp_path}"
    assert manifest_for_folder(str(tmp_path)).batch_id == manifest.batch_id


def test_a_symlink_out_of_the_folder_is_listed_but_never_read(tmp_path):
    # GIVEN a label folder with a photo and a symbolic link to a photo elsewhere on the disk
    (tmp_path / "secret.jpg").write_bytes(b"private")
    (tmp_path / "images" / "Kiwi").mkdir(parents=True)
    (tmp_path / "images" / "Kiwi" / "1.jpg").write_bytes(b"one")
    (tmp_path / "images" / "Kiwi" / "link.jpg").symlink_to(tmp_path / "secret.jpg")
    # WHEN the folder becomes a manifest
    items = {item.key: item for item in manifest_for_folder(str(tmp_path / "images")).items}
    # THEN the link is an item (the job quarantines it as outside_source) whose etag and size do not
    # come from the file it leads to
    assert items["Kiwi/link.jpg"].etag != hashlib.md5(b"private").hexdigest()
    assert items["Kiwi/link.jpg"].size is None
    assert items["Kiwi/1.jpg"].size == 3


def test_limit_spreads_across_label_folders(tmp_path):
    for label in ("A", "B", "C"):
        (tmp_path / label).mkdir()
        for index in range(5):
            (tmp_path / label / f"{index}.jpg").write_bytes(f"{label}{index}".encode())
    manifest = manifest_for_folder(str(tmp_path), limit=6)
    assert sorted({item.key.split("/")[0] for item in manifest.items}) == ["A", "B", "C"]
    assert len(manifest.items) == 6

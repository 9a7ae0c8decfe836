"""Other tools' dataset formats, one module each: FiftyOne classification JSON, COCO, Hugging Face
imagefolder metadata, Label Studio (both ways). Each planner only reads; the importer stores."""
